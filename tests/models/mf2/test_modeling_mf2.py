"""transformers' common model tests (`ModelTesterMixin`, `ConfigTester`) on MF2Model, MF2ForFacialStateRecognition and
MF2ForPreTraining, with a tiny config, set up as transformers' own blip_2 tests are (composite config, no embedding
resizing, blip_2's forward-signature and input-embeddings relaxations).

The mixins come from the installed transformers version's source distribution (see `transformers_mixins`). A test
is switched off only where blip_2's test does, or where MF² has no such feature; each says why on its line.
"""

import inspect
import unittest
from collections import OrderedDict
from unittest import mock

import torch
from torch import nn

from mf2 import MF2Config, MF2ForFacialStateRecognition, MF2ForPreTraining, MF2Model

from .transformers_mixins import transformers_tests_root

transformers_tests_root()

from transformers_tests import test_modeling_common  # noqa: E402
from transformers_tests.test_configuration_common import ConfigTester  # noqa: E402
from transformers_tests.test_modeling_common import ModelTesterMixin, floats_tensor  # noqa: E402

AU_NAMES = ["AU1", "AU6", "AU12"]  # a subset keeps the AU Q-Former's batch (images x AUs) small


class MF2ModelTester:
    """A tiny MF²: 16-px images of 8-px patches (5 vision tokens), 2-layer encoders of width 16, 3 AUs."""

    def __init__(
        self,
        parent,
        batch_size=2,
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=20,
        vocab_size=32,
        caption_length=5,
        is_training=True,
    ):
        self.parent = parent
        self.batch_size = batch_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.vocab_size = vocab_size
        self.caption_length = caption_length
        self.is_training = is_training
        # `hidden_states` / `attentions` are the vision encoder's, as in transformers' vision models: CLS + patches.
        self.seq_length = (image_size // patch_size) ** 2 + 1
        self.expected_num_hidden_layers = num_hidden_layers + 1
        # output_hidden_states adds three fields: the vision encoder's and each Q-Former's per-layer states.
        self.num_hidden_states_types = 3
        encoder = dict(
            hidden_size=hidden_size,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            intermediate_size=intermediate_size,
        )
        self.vision_config = dict(model_type="vit", image_size=image_size, patch_size=patch_size, **encoder)
        self.text_config = dict(model_type="bert", vocab_size=vocab_size, max_position_embeddings=16, **encoder)
        self.qformer_config = dict(max_position_embeddings=16, **encoder)

    def get_config(self) -> MF2Config:
        return MF2Config(
            vision_config=self.vision_config,
            text_config=self.text_config,
            qformer_config=self.qformer_config,
            au_names=AU_NAMES,
            num_query_tokens=2,
            num_au_query_tokens=2,
            au_roi_size=2,
            image_text_hidden_size=8,
            au_caption_max_length=8,
            emotion_caption_max_length=8,
            # Fine-tuning setting: the vision encoder trains, so gradients reach its per-layer outputs (frozen, as
            # MF² pretrains, it builds no graph and `test_retain_grad_hidden_states_attentions` has nothing to hold).
            freeze_vision_encoder=False,
        )

    def prepare_config_and_inputs_for_common(self):
        """The inputs every MF² model takes: images and their AU boxes (`_prepare_for_class` adds captions and
        labels for the heads that read them)."""
        batch, num_aus = self.batch_size, len(AU_NAMES)
        corner = floats_tensor([batch, num_aus, 2, 2], scale=0.5)
        size = 0.2 + floats_tensor([batch, num_aus, 2, 2], scale=0.3)
        inputs = {
            "pixel_values": floats_tensor([batch, self.num_channels, self.image_size, self.image_size]),
            "au_boxes": torch.cat([corner, corner + size], dim=-1),
        }
        return self.get_config(), inputs

    def captions(self, batch: int) -> dict:
        """Tokenised captions for `batch` images, the same for the same batch size (tests compare two calls)."""
        generator = torch.Generator().manual_seed(batch)
        shape, au_shape = (batch, self.caption_length), (batch, len(AU_NAMES), self.caption_length)
        return {
            "emotion_input_ids": torch.randint(1, self.vocab_size, shape, generator=generator),
            "emotion_attention_mask": torch.ones(shape, dtype=torch.long),
            "au_input_ids": torch.randint(1, self.vocab_size, au_shape, generator=generator),
            "au_attention_mask": torch.ones(au_shape, dtype=torch.long),
        }

    def labels(self, batch: int) -> dict:
        """AU and emotion labels for `batch` images, the same for the same batch size."""
        generator = torch.Generator().manual_seed(batch)
        return {
            "au_labels": torch.randint(0, 2, (batch, len(AU_NAMES)), generator=generator),
            "emotion_labels": torch.randint(0, 8, (batch,), generator=generator),
        }


class MF2ModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (MF2Model, MF2ForFacialStateRecognition, MF2ForPreTraining)
    additional_model_inputs = ["au_boxes"]
    test_resize_embeddings = False  # as blip_2: the input embedding is the vision encoder's patch embedding
    # The mixin dates a model by the copyright line of its config file (MF²'s has none, which reads as "before
    # 2023" and would skip the check that `_init_weights` initialises every weight): run it.
    test_can_init_all_missing_weights_before_2023 = True
    _is_composite = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # transformers lists each in-tree base model in MODEL_MAPPING_NAMES (a static list that registered models
        # cannot join); the mixins read it to treat the base model as one (no loss to train, base <-> head loading).
        names = OrderedDict(test_modeling_common.MODEL_MAPPING_NAMES, mf2="MF2Model")
        cls._base_model_names = mock.patch.object(test_modeling_common, "MODEL_MAPPING_NAMES", names)
        cls._base_model_names.start()

    @classmethod
    def tearDownClass(cls):
        cls._base_model_names.stop()
        super().tearDownClass()

    def setUp(self):
        self.model_tester = MF2ModelTester(self)
        common_properties = ["num_query_tokens", "num_au_query_tokens", "image_text_hidden_size"]
        self.config_tester = ConfigTester(
            self, config_class=MF2Config, has_text_modality=False, common_properties=common_properties
        )

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        batch = inputs["pixel_values"].shape[0]
        if model_class is MF2ForPreTraining:
            inputs.update(self.model_tester.captions(batch))
        if return_labels and model_class is not MF2Model:
            inputs.update(self.model_tester.labels(batch))
        return inputs

    def test_config(self):
        self.config_tester.run_common_tests()

    # As blip_2's vision-model test: the input embedding is a patch embedding, which `set_input_embeddings` with an
    # `nn.Embedding` (the common test) does not model.
    def test_model_get_set_embeddings(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            model = model_class(config)
            self.assertIsInstance(model.get_input_embeddings(), nn.Module)
            output_embeddings = model.get_output_embeddings()
            self.assertTrue(output_embeddings is None or isinstance(output_embeddings, nn.Linear))

    # As blip_2's: the first argument is the image; the rest differ per head (labels, captions, cached tokens).
    def test_forward_signature(self):
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        for model_class in self.all_model_classes:
            arg_names = [*inspect.signature(model_class(config).forward).parameters]
            self.assertListEqual(arg_names[:1], ["pixel_values"])
