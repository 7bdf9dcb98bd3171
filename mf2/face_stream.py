"""The facial-state pipeline's streaming engine: inputs with zero, one or several faces each, batched by faces.

`Pipeline`'s own batching (a `DataLoader` over `preprocess` outputs) assumes one model row per input; here an image
has any number of faces, and detection (the slow part) should overlap the network. `FaceStream` therefore runs
`preprocess` in worker threads a bounded number of inputs ahead, gathers faces across inputs until a forward pass is
full, and hands each input's faces to `postprocess` together, in input order. An input's result is released as soon
as it is complete (a faceless input at once, unless inputs with faces wait before it), and a pass never waits on more
than `batch_size` inputs, so memory stays bounded by the batch plus the look-ahead, whatever the number of inputs or
the length of a stretch without faces (a generator or a video is never materialised).

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


class InputError(ValueError):
    """An input the pipeline cannot analyse (unreadable, without a face under `no_face="error"`, or whose model
    output is not finite), named by its position in the pipeline's input.

    Attributes:
        index: the input's position in the pipeline's input (list, generator or video's sampled frames).
        path: the input's file or URL, when it was given as one (else `None`).
        reason: what is wrong, without the input's name. The layer's own error (`ImageInputError`, `NoFaceError`,
            `NonFiniteOutputError`, with their own fields) is the `__cause__`.
        where: how the message names the input ("input 3", "frame 12 (t=0.480 s)").
    """

    def __init__(self, index: int, path: str | None, reason: str, where: str | None = None, message: str | None = None):
        self.index, self.path, self.reason = index, path, reason
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
        if isinstance(error, ImageInputError):
            return cls(position, error.path, error.reason, where, message=error.describe(where))
        return cls(position, path_of(item), str(error), where)


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

    Raises (while iterating):
        InputError: a stage failed on an input with a `ValueError` (its `__cause__`); inputs before it have their
            results already.
    """

    def __init__(self, pipeline, batch_size: int, workers: int | None, preprocess_params: dict, forward_params: dict,
                 postprocess_params: dict, preprocess: Callable[..., dict] | None = None):  # fmt: skip
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

    def __call__(self, items: Iterable[tuple[Any, dict[str, Any]]]) -> Iterator[tuple[dict[str, Any], list[dict]]]:
        # An input's result leaves as soon as it is complete: a faceless input with nothing before it at once, the
        # others when their forward pass runs. A pass runs when its faces fill the batch, or when `batch_size` inputs
        # wait on it (faceless inputs behind a face), so memory and the lag behind the input stay bounded by the batch
        # plus the look-ahead, however long a stretch without faces.
        pending: list[tuple[dict[str, Any], dict[str, Any]]] = []
        num_faces = 0
        for extra, model_inputs in self._prepared(items):
            count = len(model_inputs["pixel_values"])
            if pending and num_faces + count > self.batch_size:
                yield from self._run_batch(pending)
                pending, num_faces = [], 0
            pending.append((extra, model_inputs))
            num_faces += count
            if num_faces == 0 or num_faces >= self.batch_size or len(pending) >= self.batch_size:
                yield from self._run_batch(pending)
                pending, num_faces = [], 0
        if pending:
            yield from self._run_batch(pending)

    def _prepared(self, items: Iterable[tuple[Any, dict[str, Any]]]) -> Iterator[tuple[dict[str, Any], dict]]:
        """`(extra, model_inputs)` in input order; preprocessing runs ahead in a bounded pool of threads."""
        lookahead = self.batch_size + 2 * self.workers
        queue: deque[tuple[int, Any, dict[str, Any], Future]] = deque()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="mf2-pipeline") as executor:
            try:
                for index, (item, extra) in enumerate(items):
                    future = executor.submit(self.preprocess, item, **self.preprocess_params)
                    queue.append((index, item, extra, future))
                    if len(queue) >= lookahead:
                        yield _collect(*queue.popleft())
                while queue:
                    yield _collect(*queue.popleft())
            finally:
                for *_, future in queue:  # stopped early (error or the caller stopped iterating)
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
            per_input["au_logits"] = outputs["au_logits"][start : start + count]
            per_input["emotion_logits"] = outputs["emotion_logits"][start : start + count]
            start += count
            try:
                faces = self.pipeline.postprocess(per_input, **self.postprocess_params)
            except ValueError as error:  # e.g. a non-finite output: that input's error, named by its position
                raise InputError.from_error(error, extra.get("image_index", 0), None, extra) from error
            yield extra, [{**extra, **face} for face in faces]


def _collect(index: int, item: Any, extra: dict[str, Any], future: Future) -> tuple[dict[str, Any], dict]:
    try:
        return extra, future.result()
    except ValueError as error:
        raise InputError.from_error(error, index, item, extra) from error


__all__ = ["FaceStream", "InputError"]
