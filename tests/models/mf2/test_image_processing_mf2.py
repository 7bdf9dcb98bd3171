"""transformers' common image-processor tests (`ImageProcessingTestMixin`) on `MF2ImageProcessor`.

The mixins come from the installed transformers version's source distribution (see `transformers_mixins`). The
random test images hold no faces, so the processor runs with `landmark_backend="template"` (each image is taken as an
aligned face crop): these tests check the processor's interface; face finding is tested in tests/.
"""

import os
import pickle
import subprocess
import sys
import tempfile
import textwrap
import unittest

import numpy as np
from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING

from mf2 import MF2Config, MF2ImageProcessor

from .transformers_mixins import transformers_tests_root

transformers_tests_root()

from transformers_tests.test_image_processing_common import (  # noqa: E402
    ImageProcessingTester,
    ImageProcessingTestMixin,
)


class MF2ImageProcessingTester(ImageProcessingTester):
    def __init__(self, parent, **kwargs):
        kwargs.setdefault("batch_size", 3)
        kwargs.setdefault("min_resolution", 24)
        kwargs.setdefault("max_resolution", 64)
        kwargs.setdefault("landmark_backend", "template")
        kwargs.setdefault("size", {"height": 18, "width": 18})
        kwargs.setdefault("image_mean", [0.5, 0.5, 0.5])
        kwargs.setdefault("image_std", [0.5, 0.5, 0.5])
        kwargs.setdefault("num_workers", 1)
        super().__init__(parent, **kwargs)

    def _get_image_processing_classes(self):
        # transformers finds an in-tree model's classes by name (IMAGE_PROCESSOR_MAPPING_NAMES); MF²'s are where
        # `import mf2` registered them: one class for both back-ends (it does its own PIL / numpy work).
        return dict(IMAGE_PROCESSOR_MAPPING[MF2Config])


class MF2ImageProcessingTest(ImageProcessingTestMixin, unittest.TestCase):
    image_processor_tester_class = MF2ImageProcessingTester

    def test_registered_class_is_mf2s(self):
        self.assertEqual(set(self.image_processing_classes.values()), {MF2ImageProcessor})

    # The mixin's version runs the saved processor in a subprocess that imports only transformers; an out-of-tree
    # processor loads there only after `import mf2` (or with trust_remote_code), so the same check imports mf2 first.
    def test_pil_can_run_without_torchvision(self):
        image_processor = self.image_processing_classes["pil"](**self.image_processor_dict)
        processor_inputs = self.image_processor_tester.prepare_processor_inputs(equal_resolution=False)
        expected_outputs = image_processor(**processor_inputs, return_tensors=None)
        script = textwrap.dedent(
            """
            import pickle
            import sys
            sys.modules["torchvision"] = None   # raises ImportError on `import torchvision`

            import mf2  # registers MF²'s classes with the Auto factories
            from transformers import AutoImageProcessor

            processor_dir, class_name, inputs_path, outputs_path = sys.argv[1:]
            processor = AutoImageProcessor.from_pretrained(processor_dir, backend="pil")
            assert type(processor).__name__ == class_name, type(processor)
            with open(inputs_path, "rb") as f:
                processor_inputs = pickle.load(f)
            outputs = processor(**processor_inputs, return_tensors=None)
            with open(outputs_path, "wb") as f:
                pickle.dump(outputs.data, f)
            """
        )
        with tempfile.TemporaryDirectory() as folder:
            image_processor.save_pretrained(folder)
            inputs_path, outputs_path = os.path.join(folder, "inputs.pkl"), os.path.join(folder, "outputs.pkl")
            with open(inputs_path, "wb") as f:
                pickle.dump(processor_inputs, f)
            result = subprocess.run(
                [sys.executable, "-c", script, folder, type(image_processor).__name__, inputs_path, outputs_path],
                capture_output=True,
                text=True,
            )
            self.assertEqual(result.returncode, 0, result.stderr)
            with open(outputs_path, "rb") as f:
                outputs = pickle.load(f)
        np.testing.assert_equal(outputs, expected_outputs.data)
