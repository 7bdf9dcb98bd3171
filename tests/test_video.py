"""Video: frame sampling, the pipeline's per-frame results, and flat memory / constant time over a long video."""

import statistics
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from face_images import ASTRONAUT_FACE_CROP, astronaut
from PIL import Image
from test_pipeline_mf2 import save_tiny_checkpoint
from transformers import pipeline

from mf2.video import VideoDecodeError, VideoReader, is_video, video_info, write_video

pytest.importorskip("av")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return pipeline("facial-state", model=str(save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-mf2"))), device="cpu")


def gradient_frames(count: int, size: int = 64):
    """Smooth frames whose brightness encodes the frame number (cheap to encode, easy to check after decoding)."""
    ramp = np.linspace(0, 60, size, dtype=np.float32)[None, :, None]
    for index in range(count):
        value = (index * 13) % 190
        yield np.broadcast_to(ramp + value, (size, size, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """100 frames at 25 fps (4 s)."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, gradient_frames(100), fps=25)
    return path


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory) -> Path:
    """12 frames at 6 fps of the astronaut's face drifting right by 4 px a frame."""
    face = np.asarray(Image.fromarray(astronaut()).crop(ASTRONAUT_FACE_CROP).resize((208, 224)))
    frames = []
    for index in range(12):
        canvas = np.full((256, 304, 3), 100, dtype=np.uint8)
        canvas[16:240, 4 * index : 4 * index + 208] = face
        frames.append(canvas)
    path = tmp_path_factory.mktemp("video") / "face.mp4"
    write_video(path, frames, fps=6)
    return path


def test_is_video():
    assert is_video("a/b/clip.MP4") and is_video(Path("x.webm"))
    assert not is_video("photo.png") and not is_video("https://example.com/clip.mp4") and not is_video(3)


def test_video_info(clip):
    info = video_info(clip)
    assert info["fps"] == 25 and info["frames"] == 100 and info["width"] == info["height"] == 64
    assert info["duration"] == pytest.approx(4.0, abs=0.05)


def test_every_frame_and_every_nth(clip):
    frames = list(VideoReader(clip))
    assert [frame.index for frame in frames] == list(range(100))
    assert frames[10].time == pytest.approx(0.4)
    assert frames[0].image.shape == (64, 64, 3) and frames[0].image.dtype == np.uint8
    brightness = [int(frame.image[:, 0].mean()) for frame in frames[:20]]
    assert brightness == pytest.approx([(13 * i) % 190 for i in range(20)], abs=6)  # decoded in order
    assert [frame.index for frame in VideoReader(clip, every=30)] == [0, 30, 60, 90]


def test_target_fps_start_end_and_max_frames(clip):
    sampled = list(VideoReader(clip, fps=5))
    assert [frame.index for frame in sampled] == list(range(0, 100, 5))
    assert [round(frame.time, 3) for frame in sampled[:3]] == [0.0, 0.2, 0.4]
    assert len(list(VideoReader(clip, fps=100))) == 100  # faster than the video: every frame once
    window = list(VideoReader(clip, fps=2, start=1.0, end=2.5))
    assert [frame.time for frame in window] == pytest.approx([1.0, 1.52, 2.0])  # first frame at or after k / 2 s
    assert len(list(VideoReader(clip, max_frames=7))) == 7


def test_a_video_is_opened_once_from_the_command_line_to_its_frames(pipe, clip, tmp_path, monkeypatch):
    """`mf2 analyze` reads a video's metadata and its frames from one `VideoReader`; `pipe.video` takes it as is."""
    import mf2.video
    from mf2.cli import main as cli_main

    opened = []
    real_open = mf2.video._open
    monkeypatch.setattr(mf2.video, "_open", lambda path: opened.append(path) or real_open(path))
    model = pipe.model.name_or_path
    assert (
        cli_main(["analyze", str(clip), "--model", model, "--every-n-frames", "25", "-o", str(tmp_path / "r.jsonl")])
        == 0
    )
    assert len(opened) == 1
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 4  # frames 0, 25, 50, 75
    opened.clear()
    with mf2.video.VideoReader(clip, every=50) as video:
        assert video.info["frames"] == 100
        assert [result["frame"] for result in pipe.video(video)] == [0, 50]
    assert len(opened) == 1
    with pytest.raises(ValueError, match="own sampling"):
        pipe.video(mf2.video.VideoReader(clip), fps=2)


def test_bad_videos_and_options_raise_clear_errors(clip, tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        list(VideoReader(tmp_path / "missing.mp4"))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match="Could not read video"):
        video_info(broken)
    with pytest.raises(ValueError, match="either `fps`"):
        list(VideoReader(clip, fps=5, every=2))
    with pytest.raises(ValueError, match="positive"):
        list(VideoReader(clip, fps=0))
    with pytest.raises(ValueError, match="positive integer"):
        list(VideoReader(clip, every=0))


def test_pipeline_gives_results_per_sampled_frame(pipe, face_clip):
    results = pipe(str(face_clip), video_fps=3, return_landmarks=True)
    assert not isinstance(results, list)  # a generator: frames are streamed
    results = list(results)
    assert [result["frame"] for result in results] == [0, 2, 4, 6, 8, 10]
    assert [result["time"] for result in results] == pytest.approx([index / 6 for index in range(0, 12, 2)], abs=1e-3)
    lefts = []
    for result in results:
        assert len(result["faces"]) == 1
        face = result["faces"][0]
        assert face["frame"] == result["frame"] and face["time"] == result["time"]
        assert len(face["action_units"]) == 12 and len(face["landmarks"]) == 68
        lefts.append(np.mean(face["landmarks"], axis=0)[0])  # the box snaps to dlib's HOG grid, the points do not
    assert all(8 - 3 < b - a < 8 + 3 for a, b in zip(lefts, lefts[1:])), lefts  # the face drifts 8 px per sample


def test_video_results_match_the_frames_as_images(pipe, face_clip):
    frames = list(VideoReader(face_clip, every=4))
    # Searching every frame (no tracking, which tests/test_face_tracking.py covers), a frame is analysed as a photo.
    as_video = list(pipe.video(face_clip, every=4, batch_size=3, return_frames=True, detect_every=1))
    as_images = pipe([frame.image for frame in frames], batch_size=1)
    assert len(as_video) == len(as_images) == 3
    for result, faces, frame in zip(as_video, as_images, frames):
        np.testing.assert_array_equal(result["image"], frame.image)
        np.testing.assert_allclose(result["faces"][0]["box"], faces[0]["box"])
        np.testing.assert_allclose(
            list(result["faces"][0]["action_units"].values()), list(faces[0]["action_units"].values()), atol=1e-5
        )


def test_frames_without_faces_are_empty_not_errors(pipe, clip):
    results = list(pipe.video(clip, every=25))
    assert [result["faces"] for result in results] == [[], [], [], []]
    with pytest.raises(ValueError, match=r"No face found in frame 0 \(t=0.000 s\)"):
        list(pipe.video(clip, every=25, no_face="error"))
    with pytest.raises(ValueError, match="no such file"):
        pipe.video(Path(clip).with_name("missing.mp4"))  # fails at the call, not at the first frame


def _cut_video(folder: Path, suffix: str, fraction: float, codec: str, **options) -> Path:
    """60 frames of `gradient_frames` (64 px, 25 fps) in `codec`, the file cut to `fraction` of its bytes."""
    import av

    path = folder / f"full{suffix}"
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=25)
        stream.height = stream.width = 64
        stream.pix_fmt = "yuv420p"
        for array in gradient_frames(60):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    cut = folder / f"cut{suffix}"
    cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])
    return cut


@pytest.mark.parametrize(
    ("suffix", "fraction", "codec", "options"),
    [
        (".mp4", 0.5, "mpeg4", {"movflags": "faststart"}),  # index first: FFmpeg just stops at the cut
        (".mp4", 0.9, "mpeg4", {"movflags": "faststart"}),
        (".mkv", 0.5, "mpeg4", {}),  # no frame count declared: the duration tells
        (".mkv", 0.5, "libx264", {}),
    ],
)
def test_a_cut_video_raises_after_the_frames_it_could_decode(tmp_path, suffix, fraction, codec, options):
    cut = _cut_video(tmp_path, suffix, fraction, codec, **options)
    frames = []
    with pytest.raises(VideoDecodeError, match="Could not decode video .* past frame") as raised:
        for frame in VideoReader(cut):
            frames.append(frame.index)
    assert frames == list(range(len(frames))) and raised.value.frame == len(frames) < 60
    assert raised.value.path == str(cut) and "cut short" in raised.value.reason
    assert list(VideoReader(cut, max_frames=1)) or not frames  # stopping early on purpose is no error
    full = tmp_path / f"full{suffix}"
    assert len(list(VideoReader(full))) == 60  # the whole file decodes without complaint


def test_pipeline_gives_the_frames_decoded_before_a_decode_error(pipe, tmp_path):
    cut = _cut_video(tmp_path, ".mp4", 0.5, "mpeg4", movflags="faststart")
    decodable = len([frame for frame in _frames_until_error(cut)])
    results = []
    with pytest.raises(VideoDecodeError) as raised:
        for result in pipe.video(cut, batch_size=8, landmark_backend="template"):
            results.append(result["frame"])
    assert results == list(range(decodable)) and raised.value.frame == decodable > 0


def _frames_until_error(path: Path):
    try:
        yield from VideoReader(path)
    except VideoDecodeError:
        return


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc to read the resident memory")
def test_long_video_streams_with_flat_memory_and_constant_time_per_frame(pipe, tmp_path):
    """py-feat #139 / #170 (whole video in RAM) and #182 (per-frame time grows): neither may happen here."""
    count, size = 3000, 128
    path = tmp_path / "long.mp4"
    write_video(path, gradient_frames(count, size), fps=25)
    decoded_mb = count * size * size * 3 / 2**20  # ~141 MB if the frames were all kept
    # The template back-end treats every frame as an aligned face, so every frame goes through the model.
    results = pipe.video(path, batch_size=16, landmark_backend="template")
    memory, chunk_seconds = {}, []
    seen, started = 0, time.perf_counter()
    # One intra-op thread: on a loaded 2-core machine, two OpenMP threads make the tiny model ~30x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for result in results:
            assert len(result["faces"]) == 1
            seen += 1
            if seen == 200:
                memory["warm"] = _rss_mb()
            if seen % 250 == 0:
                now = time.perf_counter()
                chunk_seconds.append(now - started)
                started = now
                memory["peak"] = max(memory.get("peak", 0.0), _rss_mb())
    finally:
        torch.set_num_threads(threads)
    assert seen == count
    growth = memory["peak"] - memory["warm"]
    assert growth < 30, f"memory grew by {growth:.1f} MB over {count} frames ({decoded_mb:.0f} MB decoded)"
    quarter = len(chunk_seconds) // 4
    early, late = statistics.median(chunk_seconds[1 : 1 + quarter]), statistics.median(chunk_seconds[-quarter:])
    assert late < 2.5 * early + 0.1, f"time per 250 frames grew from {early:.2f} s to {late:.2f} s"


def test_a_sideways_phone_video_is_read_upright_as_players_show_it(pipe, tmp_path):
    """A video stored sideways with a 90° display matrix (a phone held upright): its frames come turned as players
    show them, so the face is found in each (read as stored, it lies on its side and no face is found)."""
    face = np.asarray(Image.fromarray(astronaut()).crop(ASTRONAUT_FACE_CROP).resize((208, 224)))
    upright = np.full((256, 240, 3), 100, dtype=np.uint8)
    upright[16:240, 16:224] = face
    stored = np.ascontiguousarray(np.rot90(upright, -1))  # turned a quarter clockwise: 240 high, 256 wide
    path = tmp_path / "phone.mp4"
    write_video(path, [stored] * 3, fps=6, rotation=90)  # shown turned back a quarter counter-clockwise
    assert (video_info(path)["width"], video_info(path)["height"]) == (256, 240)  # as stored
    frames = list(VideoReader(path))
    assert [frame.image.shape for frame in frames] == [(256, 240, 3)] * 3
    assert np.abs(frames[0].image.astype(int) - upright).mean() < 8  # upright, up to the codec's loss
    assert [len(result["faces"]) for result in pipe(str(path))] == [1, 1, 1]
    assert [len(result["faces"]) for result in pipe.video(str(path), max_frames=1)] == [1]


def test_display_rotation_rounds_to_quarter_turns():
    from types import SimpleNamespace

    from mf2.video import display_rotation, upright

    assert [display_rotation(SimpleNamespace(rotation=d)) for d in (0, 90, -90, 180, -180, 89.9)] == [
        0,
        90,
        270,
        180,
        180,
        90,
    ]
    assert display_rotation(SimpleNamespace()) == 0 and display_rotation(SimpleNamespace(rotation=None)) == 0
    image = np.arange(6).reshape(2, 3)
    assert upright(image, SimpleNamespace(rotation=-90)).tolist() == np.rot90(image, -1).tolist()


def _mpegts(path: Path, start: float, count: int = 10, fps: int = 10, container_format: str = "mpegts") -> Path:
    """`count` frames of `gradient_frames` in MPEG-TS (or `container_format`), which declares no frame rate and no
    frame count, with the stream's clock starting at `start` seconds (as MPEG-TS from FFmpeg, camcorders and trimmed
    clips do)."""
    from fractions import Fraction

    import av

    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.height = stream.width = 64
        stream.pix_fmt, stream.time_base = "yuv420p", Fraction(1, fps)
        for index, array in enumerate(gradient_frames(count)):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = round(start * fps) + index, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("start", [0.0, 10.0])
def test_frame_times_count_from_the_streams_start_and_a_whole_stream_without_a_rate_is_whole(tmp_path, start):
    """Frame 0 is at 0 s whatever clock the stream starts on; with no declared rate the last frame lasts as long as
    the gap before it, so a whole file reaches its declared duration (not "cut short" one frame before it)."""
    video = _mpegts(tmp_path / "clip.ts", start)
    assert video_info(video)["fps"] is None  # the case: no rate to add a frame's length with
    assert [round(frame.time, 3) for frame in VideoReader(video)] == [k / 10 for k in range(10)]
    assert [frame.index for frame in VideoReader(video, fps=5, start=0.4)] == [4, 6, 8]


def test_a_whole_matroska_clip_whose_clock_starts_past_0_is_not_called_cut(tmp_path):
    """Matroska declares its duration from 0, not from the first frame: a whole clip starting at 1 s was reported as
    "cut short" after its last frame (an error record, exit 1)."""
    video = _mpegts(tmp_path / "clip.mkv", 1.0, count=30, fps=25, container_format="matroska")
    frames = list(VideoReader(video))
    assert len(frames) == 30 and frames[0].time == 0.0
