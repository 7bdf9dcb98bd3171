"""The facial-state pipeline's streaming engine: inputs with zero, one or several faces each, batched by faces.

`Pipeline`'s own batching (a `DataLoader` over `preprocess` outputs) assumes one model row per input; here an image
has any number of faces, and detection (the slow part) should overlap the network. `FaceStream` therefore runs
`preprocess` in worker threads a bounded number of inputs ahead, gathers faces across inputs until a forward pass is
full, and hands each input's faces to `postprocess` together, in input order. An input's result is released as soon
as it is complete (a faceless input at once, unless inputs with faces wait before it), and a pass never waits on more
than `batch_size` inputs, so memory stays bounded by the batch plus the look-ahead, whatever the number of inputs or
the length of a stretch without faces (a generator or a video is never materialised). Images given decoded (PIL
images, arrays: `mf2 analyze` decodes each file before the stream takes it) are counted by their pixels too: the
stream reads no further ahead, and a pass waits on no more inputs, than `max_pixels` (`MAX_PIXELS_IN_FLIGHT`, 100
MP) allow, or one input, so twenty photos near PIL's 178 MP limit are not decoded at once.

Why not transformers' `ChunkPipeline`, which also turns one input into many rows: measured with the same stages
(`benchmarks/benchmark_chunk_pipeline.py`, docs/benchmarks.md), it was 14-30% slower on the 2-core CPU (it runs
detection either in turn with the network or in at most one `DataLoader` process), a faceless input needs a
placeholder row through the network, and its errors arrive without the input's position, or from the worker
process as a bare `RuntimeError` without their fields.

This file uses only relative imports of flat sibling modules, so it travels with remote code.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from .image_loading import ImageInputError, path_of

MAX_PIXELS_IN_FLIGHT = 100_000_000
"""How many pixels of decoded inputs `FaceStream` holds ahead of its results (about 300 MB as RGB bytes, more as the
image processor's copies); one input over it is still taken, alone."""


def pixels_of(item: Any) -> int:
    """The pixels of a decoded image (PIL image, numpy array, torch tensor); 0 for a path (decoded by the worker that
    analyses it, and let go there)."""
    size = getattr(item, "size", None)
    if isinstance(size, tuple) and len(size) == 2:  # PIL: (width, height)
        return int(size[0]) * int(size[1])
    shape = getattr(item, "shape", None)
    if shape is not None and len(shape) >= 2:
        height, width = (
            (shape[1], shape[2]) if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] > 4 else shape[:2]
        )
        return int(height) * int(width)
    return 0


class InputError(ValueError):
    """An input the pipeline cannot analyse (unreadable, without a face under `no_face="error"`, or whose model
    output is not finite), named by its position in the pipeline's input.

    Attributes:
        index: the input's position in the pipeline's input (list, generator or video's sampled frames).
        path: the input's file or URL, when it was given as one (else `None`).
        reason: what is wrong, without the input's name.
        kind: what failed, for callers to act on: `"unreadable"`, `"no_face"` (`no_face="error"`), `"not_finite"`
            (the model's output), or `"invalid"` (another `ValueError` of a stage).
        detail: the layer error's own fields (`NoFaceError`: `backend`, `scale`, `longest`; `NonFiniteOutputError`:
            `faces`, `dtype`); empty for the others. The layer's error stays the `__cause__`, for the traceback only.
        where: how the message names the input ("input 3", "frame 12 (t=0.480 s)").
        frame, time: the video frame's index and seconds, when the input is a video frame (else `None`).
    """

    def __init__(
        self,
        index: int,
        path: str | None,
        reason: str,
        where: str | None = None,
        message: str | None = None,
        frame: int | None = None,
        time: float | None = None,
        kind: str = "invalid",
        detail: dict[str, Any] | None = None,
    ):
        self.index, self.path, self.reason = index, path, reason
        self.kind, self.detail = kind, dict(detail or {})
        self.frame, self.time = frame, time
        self.where = where if where is not None else f"input {index}"
        named = f" ('{path}')" if path is not None else ""
        super().__init__(message if message is not None else f"{self.where}{named}: {reason}")

    @classmethod
    def from_error(cls, error: ValueError, index: int, item: Any, extra: dict[str, Any]) -> InputError:
        """The pipeline's error for `error`, raised by a stage on the input `item` (the processor saw it alone, as
        its "image 0"): re-numbered by the input's position, or its video frame, from the error's fields."""
        if "frame" in extra:
            where = f"frame {extra['frame']} (t={extra['time']:.3f} s)"
        else:
            where = f"input {extra.get('image_index', index)}"
        position = extra.get("image_index", index)
        known = {
            "frame": extra.get("frame"),
            "time": extra.get("time"),
            "kind": getattr(error, "kind", "invalid"),
            "detail": error.fields() if hasattr(error, "fields") else None,
        }
        if isinstance(error, ImageInputError):
            return cls(position, error.path, error.reason, where, message=error.describe(where), **known)
        return cls(position, path_of(item), str(error), where, **known)


class NonFiniteOutputError(ValueError):
    """The model's output for some faces is NaN or infinite: an error, never a result.

    Attributes:
        faces: the rows (faces of the input) whose logits are not finite.
        dtype: the model's dtype (half precision is the usual cause).
    """

    kind = "not_finite"

    def __init__(self, faces: list[int], dtype: str):
        self.faces, self.dtype = faces, dtype
        super().__init__(
            f"the model's output is not finite (NaN or infinite) for face(s) {faces} with the model in {dtype}; "
            "run it in float32 (dtype=torch.float32, `mf2 analyze --dtype float32`)"
        )

    def fields(self) -> dict[str, Any]:
        return {"faces": self.faces, "dtype": self.dtype}


class FaceStream:
    """`(extra, faces)` for each `(input, extra)` item, in input order; `extra`'s fields are copied into every face.

    Args:
        pipeline: what runs the stages: `preprocess(input, **params)` → model inputs with `pixel_values` (one row per
            face) and `au_boxes`; `forward(batch, **params)` → `au_logits`, `emotion_logits`; `postprocess(per_input,
            **params)` → a list of face dicts.
        batch_size: faces per forward pass (the faces of one input are never split), and the most inputs a pass
            waits for.
        workers: preprocessing threads; `None` or 0 picks the image processor's `num_workers` (else up to 4).
        preprocess_params, forward_params, postprocess_params: the stages' keyword arguments.
        preprocess: what prepares each input in place of `pipeline.preprocess`, one input after another, in order,
            on one thread: a `FaceTracker`, which carries the faces of a video from one frame to the next.
        max_pixels: the most pixels of decoded inputs read ahead of the results (`MAX_PIXELS_IN_FLIGHT`).
        identify: called on each input's `(extra, model outputs)` in input order, after the forward pass and before
            `postprocess`, which gets what it returns as `face_tracks` (one per face): a video's
            `mf2.face_identity.FaceIdentities`, which numbers the faces by person from frame to frame.

    Raises (while iterating):
        InputError: a stage failed on an input with a `ValueError` (its `kind` and `detail` say which and how);
            inputs before it have their results already.
    """

    def __init__(
        self,
        pipeline,
        batch_size: int,
        workers: int | None,
        preprocess_params: dict,
        forward_params: dict,
        postprocess_params: dict,
        preprocess: Callable[..., dict] | None = None,
        max_pixels: int = MAX_PIXELS_IN_FLIGHT,
        identify: Callable[[dict[str, Any], dict[str, Any]], list] | None = None,
    ):
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
        self.pipeline, self.batch_size = pipeline, batch_size
        self.preprocess = preprocess if preprocess is not None else pipeline.preprocess
        # One thread runs its tasks in the order they were submitted: the frames reach a tracker in order.
        self.workers = (
            1
            if preprocess is not None
            else int(workers or pipeline.image_processor.num_workers or min(os.cpu_count() or 1, 4))
        )
        self.preprocess_params, self.forward_params = preprocess_params, forward_params
        self.postprocess_params = postprocess_params
        self.max_pixels = max_pixels
        self.identify = identify

    def __call__(self, items: Iterable[tuple[Any, dict[str, Any]]]) -> Iterator[tuple[dict[str, Any], list[dict]]]:
        # An input's result leaves as soon as it is complete: a faceless input with nothing before it at once, the
        # others when their forward pass runs. A pass runs when its faces fill the batch, or when `batch_size` inputs
        # wait on it (faceless inputs behind a face), so memory and the lag behind the input stay bounded by the batch
        # plus the look-ahead, however long a stretch without faces.
        # Pixels count too: a caller may hold the inputs of a pass until their results come (`mf2 analyze --annotate`).
        pending: list[tuple[dict[str, Any], dict[str, Any]]] = []
        num_faces = pending_pixels = 0
        for extra, model_inputs, pixels in self._prepared(items):
            count = len(model_inputs["pixel_values"])
            if pending and num_faces + count > self.batch_size:
                yield from self._run_batch(pending)
                pending, num_faces, pending_pixels = [], 0, 0
            pending.append((extra, model_inputs))
            num_faces += count
            pending_pixels += pixels
            full = num_faces >= self.batch_size or len(pending) >= self.batch_size or pending_pixels >= self.max_pixels
            if num_faces == 0 or full:
                yield from self._run_batch(pending)
                pending, num_faces, pending_pixels = [], 0, 0
        if pending:
            yield from self._run_batch(pending)

    def _prepared(self, items: Iterable[tuple[Any, dict[str, Any]]]) -> Iterator[tuple[dict[str, Any], dict, int]]:
        """`(extra, model_inputs, pixels)` in input order; preprocessing runs ahead in a bounded pool of threads, by
        at most `lookahead` inputs and `max_pixels` pixels of decoded inputs (or one input)."""
        lookahead = self.batch_size + 2 * self.workers
        queue: deque[tuple[int, Any, dict[str, Any], Future, int]] = deque()
        in_flight = 0  # pixels of the decoded inputs in `queue`
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mf2-pipeline") as executor:
            try:
                for index, (item, extra) in enumerate(items):
                    pixels = pixels_of(item)
                    future = executor.submit(self.preprocess, item, **self.preprocess_params)
                    queue.append((index, item, extra, future, pixels))
                    in_flight += pixels
                    del item  # held by the queue only, so that it goes once collected
                    while queue and (len(queue) >= lookahead or in_flight >= self.max_pixels):
                        in_flight -= queue[0][-1]
                        yield _collect(*queue.popleft())
                while queue:
                    yield _collect(*queue.popleft())
            finally:
                for *_, future, _ in queue:  # stopped early (error or the caller stopped iterating)
                    future.cancel()

    def _run_batch(self, pending: list[tuple[dict[str, Any], dict[str, Any]]]):
        counts = [len(model_inputs["pixel_values"]) for _, model_inputs in pending]
        batch = {
            "pixel_values": torch.cat([model_inputs["pixel_values"] for _, model_inputs in pending]),
            "au_boxes": torch.cat([model_inputs["au_boxes"] for _, model_inputs in pending]),
        }
        outputs = self.pipeline.forward(batch, **self.forward_params)
        start = 0
        for (extra, model_inputs), count in zip(pending, counts):
            per_input = dict(model_inputs)
            for key in ("au_logits", "emotion_logits", "identity_features"):
                if key in outputs:
                    per_input[key] = outputs[key][start : start + count]
            start += count
            if self.identify is not None:
                per_input["face_tracks"] = self.identify(extra, per_input)
            try:
                faces = self.pipeline.postprocess(per_input, **self.postprocess_params)
            except ValueError as error:  # e.g. a non-finite output: that input's error, named by its position
                raise InputError.from_error(error, extra.get("image_index", 0), None, extra) from error
            yield extra, [{**extra, **face} for face in faces]


def _collect(index: int, item: Any, extra: dict[str, Any], future: Future, pixels: int) -> tuple[dict, dict, int]:
    try:
        return extra, future.result(), pixels
    except ValueError as error:
        raise InputError.from_error(error, index, item, extra) from error


__all__ = ["MAX_PIXELS_IN_FLIGHT", "FaceStream", "InputError", "NonFiniteOutputError", "pixels_of"]
