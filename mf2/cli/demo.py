"""`mf2 demo`: a Gradio web page to drop in a photo, a webcam snapshot or a video and look at the results.

This module wires the page (`build_demo`) and the command line (`main`, also run by the Space's `app.py`); what the
page shows is computed in `mf2.cli.demo_results`. Gradio is the optional extra `mf2[demo]` and is imported only here,
inside functions, after the upload folder has been set: Gradio reads `GRADIO_TEMP_DIR` when it is imported.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from .demo_results import (
    AU_BARS_CSS,
    MAX_UPLOAD_MB,
    VIDEO_FPS,
    DemoInputError,
    analyze_image,
    analyze_video,
    au_bars_html,
    emotion_scores,
    thresholds,
    write_record,
)

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples" / "images"
"""The example photos of a source checkout (and of a Space, which is one); absent from a wheel install."""
INSTALL_HINT = "pip install 'mf2[demo]'"
INTRO = (
    "# MF² — facial Action Units and emotions\n"
    "Upload a photo, take a webcam snapshot, or click an example: every face is found, its 68 landmarks and "
    "AU regions drawn, and the model says its emotion and which Action Units are active. "
    "**Research use only** (trained on FER+ and CK+, see the model card). Nothing you upload is kept."
)
CSS = AU_BARS_CSS + "#mf2-status { font-size: 16px; }\n"


# --------------------------------------------------------------------------------------------------- handlers


def _message(text: str, error: bool = False) -> str:
    return f"⚠️ **{text}**" if error else text


def _unexpected(error: Exception) -> str:
    """An error no check foresaw: logged in full on the server, one line in the page, and the server goes on."""
    logger.exception("mf2 demo: analysis failed")
    return _message(
        f"Something went wrong while analysing this input ({type(error).__name__}). Please try another file.",
        error=True,
    )


def photo_handler(pipe, workdir: Path, max_mb: float = MAX_UPLOAD_MB):
    """The handler of uploads, webcam snapshots and examples: (status, annotated image, [(face, its crop)], JSON
    file, JSON record)."""

    def handle(image: Any) -> tuple[Any, ...]:
        name = Path(image).name if isinstance(image, (str, Path)) else "webcam snapshot"
        try:
            result = analyze_image(pipe, image, name=name, max_mb=max_mb)
        except DemoInputError as error:
            return _message(str(error), error=True), None, [], None, None
        except Exception as error:  # noqa: BLE001 - the page must keep working, whatever went wrong
            return _unexpected(error), None, [], None, None
        record_file = str(write_record(result.record, workdir, "mf2-faces")) if result.record else None
        faces = list(zip(result.faces, result.crops))
        return _message(result.message), result.annotated, faces, record_file, result.record

    return handle


def video_handler(pipe, workdir: Path, max_mb: float = MAX_UPLOAD_MB):
    """The handler of video uploads, a generator: Gradio shows each yield, so the tables and curves grow as the
    video streams through the pipeline, under a progress bar; each person's timeline comes with the last."""
    import gradio as gr
    import pandas as pd

    def outputs(update, final: bool) -> tuple[Any, ...]:
        record_file = str(write_record(update.records, workdir, "mf2-video")) if final and update.records else None
        curves = pd.DataFrame(update.curves or [], columns=["time", "AU", "probability"])
        timelines = update.timelines or None
        return (
            _message(update.message),
            pd.DataFrame(update.rows),
            curves,
            record_file,
            pd.DataFrame(update.people),
            timelines,
        )

    def handle(path: str | None, fps: float, progress=gr.Progress()):  # noqa: B008 - Gradio's documented idiom
        def report(count: int, total: int | None) -> None:
            progress((count, total), desc="analysing frames", unit="frames")

        try:
            update = None
            for update in analyze_video(pipe, path, fps=float(fps), progress=report, max_mb=max_mb):
                yield outputs(update, final=False)
            if update is not None:
                yield outputs(update, final=True)
        except DemoInputError as error:
            yield _message(str(error), error=True), None, None, None, None, None
        except Exception as error:  # noqa: BLE001
            yield _unexpected(error), None, None, None, None, None

    return handle


# --------------------------------------------------------------------------------------------------- the page


def _face_tabs(faces: list[tuple[dict[str, Any], Any]], au_thresholds: dict[str, float]) -> None:
    """One tab per face (numbered as on the annotated image): the face zoomed in, emotion bars, AU bars, the
    explanation."""
    import gradio as gr

    if not faces:
        return
    with gr.Tabs():
        for number, (face, crop) in enumerate(faces, start=1):
            with gr.Tab(f"Face #{number}: {face['emotion']['label']}"):
                with gr.Row():
                    gr.Image(crop, label=f"Face #{number}", type="pil", format="png", interactive=False, scale=2)
                    gr.Label(
                        emotion_scores(face),
                        label="Emotion probabilities",
                        num_top_classes=len(face["emotions"]),
                        scale=3,
                    )
                gr.HTML(au_bars_html(face, au_thresholds), elem_classes="mf2-au-panel")
                gr.Markdown(f"**Why:** {face.get('explanation', '')}", elem_classes="mf2-explanation")


def _photo_tab(pipe, workdir: Path, examples: list[str], max_mb: float) -> None:
    import gradio as gr

    with gr.Row():
        with gr.Column():
            upload = gr.File(label="Upload a photo", file_types=["image"], type="filepath", elem_id="mf2-upload")
            examples_row = gr.Column()
        webcam = gr.Image(
            label="…or take a webcam snapshot", sources=["webcam"], type="pil", elem_id="mf2-webcam", height=260
        )
    status = gr.Markdown("Upload a photo, take a webcam snapshot or click an example.", elem_id="mf2-status")
    faces = gr.State([])
    with gr.Row():
        annotated = gr.Image(
            label="Faces, landmarks, AU regions", type="pil", interactive=False, format="png", elem_id="mf2-annotated"
        )
        with gr.Column():
            au_thresholds = thresholds(pipe)

            @gr.render(inputs=faces)
            def render_faces(current: list[tuple[dict[str, Any], Any]]) -> None:
                _face_tabs(current, au_thresholds)

    with gr.Row():
        record_file = gr.File(label="JSON record (download)", interactive=False, elem_id="mf2-record")
        with gr.Accordion("JSON record", open=False):
            record = gr.JSON()
    outputs = [status, annotated, faces, record_file, record]
    handle = photo_handler(pipe, workdir, max_mb)
    upload.upload(handle, inputs=upload, outputs=outputs)
    webcam.change(handle, inputs=webcam, outputs=outputs)  # a snapshot taken (or cleared: the prompt again)
    if examples:
        with examples_row:  # under the upload field, created last: they need the outputs
            gr.Examples(
                [[path] for path in examples],
                inputs=upload,
                outputs=outputs,
                fn=handle,
                run_on_click=True,
                cache_examples=False,
                label="Example photos (click one)",
            )


def _video_tab(pipe, workdir: Path, max_mb: float) -> None:
    import gradio as gr

    with gr.Row():
        # A file field, not gr.Video: PyAV decodes containers and codecs a browser cannot play (AVI, MKV, MPEG-4
        # part 2), which gr.Video would flag as an error before the analysis even starts.
        video = gr.File(label="Upload a video", file_types=["video"], type="filepath", elem_id="mf2-video")
        with gr.Column():
            fps = gr.Slider(1, 15, value=VIDEO_FPS, step=1, label="Frames analysed per second of video")
            start = gr.Button("Analyse the video", variant="primary")
            status = gr.Markdown(
                "Every face of each sampled frame is analysed and followed from frame to frame: "
                "`track` numbers the people.",
                elem_id="mf2-video-status",
            )
    people = gr.Dataframe(label="People (tracks)", interactive=False, wrap=True)
    curves = gr.LinePlot(
        x="time",
        y="probability",
        color="AU",
        y_lim=[0, 1],
        title="AU probabilities over time (the person seen most)",
        x_title="time (s)",
        height=320,
    )
    timelines = gr.Gallery(
        label="Timeline of each person: AUs (red: active) and emotion over time", columns=1, height="auto", format="png"
    )
    table = gr.Dataframe(label="Results per face and frame", interactive=False, wrap=True)
    record_file = gr.File(label="JSON lines (download)", interactive=False)
    start.click(
        video_handler(pipe, workdir, max_mb),
        inputs=[video, fps],
        outputs=[status, table, curves, record_file, people, timelines],
    )


def build_demo(pipe, workdir: str | Path, examples: list[str] | None = None, max_mb: float = MAX_UPLOAD_MB):
    """The page as a `gr.Blocks`: a photo tab (upload, webcam, examples) and a video tab, taking uploads up to
    `max_mb` megabytes."""
    import gradio as gr

    with gr.Blocks(title="MF² facial state", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs():
            with gr.Tab("Photo"):
                _photo_tab(pipe, Path(workdir), examples or [], max_mb)
            with gr.Tab("Video"):
                _video_tab(pipe, Path(workdir), max_mb)
    return demo


# --------------------------------------------------------------------------------------------------- serving


def private_upload_folder() -> Path:
    """A fresh temporary folder for every file the server writes (uploads, Gradio's cache, our JSON records),
    removed when the process ends, also on SIGTERM (a Space or a test stopping the server)."""
    folder = Path(tempfile.mkdtemp(prefix="mf2-demo-", dir=os.environ.get("GRADIO_TEMP_DIR") or None))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that atexit runs
    return folder


def example_photos(folder: Path = EXAMPLES_DIR) -> list[str]:
    return [str(path) for path in sorted(folder.glob("*.png"))] if folder.is_dir() else []


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mf2 demo", description="Start the MF² web demo (Gradio) in a browser.")
    parser.add_argument(
        "--model", default=None, help="MF² checkpoint (folder or Hub id); default: the shipped mf2-base"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: loopback only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda (default: the pipeline's)")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, help="largest upload accepted")
    return parser


def load(model: str | None, device: str | None):
    """`pipeline("facial-state")`: the shipped model without `--model`."""
    from transformers import pipeline

    import mf2  # noqa: F401 - registers the task

    kwargs = {"device": device} if device else {}
    return pipeline("facial-state", model=model, **kwargs) if model else pipeline("facial-state", **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if importlib.util.find_spec("gradio") is None:
        print(f"mf2 demo: Gradio is not installed; {INSTALL_HINT}", file=sys.stderr)
        return 1
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home, from a Space either
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")  # analysis failures, not HTTP chatter
    if args.model and args.model.startswith((".", "/", "~")) and not Path(args.model).expanduser().is_dir():
        print(
            f"mf2 demo: no model folder at {args.model}; give --model an MF² checkpoint folder or a Hub id",
            file=sys.stderr,
        )
        return 2
    workdir = private_upload_folder()
    try:
        pipe = load(args.model, args.device)
    except Exception as error:  # noqa: BLE001 - one line, never a traceback
        print(
            f"mf2 demo: cannot load the model {args.model or 'mf2-base'}: {str(error).splitlines()[0]}", file=sys.stderr
        )
        return 1
    import gradio as gr

    examples = example_photos()
    demo = build_demo(pipe, workdir, examples, args.max_upload_mb)
    demo.queue(default_concurrency_limit=1, max_size=32)  # one analysis at a time: the model is not re-entrant
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    try:
        demo.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            ssr_mode=False,
            max_file_size=f"{args.max_upload_mb:g}mb",
            allowed_paths=examples,
            footer_links=[],
            theme=theme,
            css=CSS,
        )
    except OSError as error:  # port taken, address not available
        print(f"mf2 demo: cannot serve on {args.host}:{args.port}: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["INSTALL_HINT", "build_demo", "main"]
