"""Who is who in a video (`mf2.face_identity`): a face's `track` stays with its person from frame to frame.

The first tests give `FaceIdentities` boxes and features directly. The others run `pipe.video` with the shipped
mf2-base on synthetic clips of two real people (the astronaut and Grace Hopper, public-domain photos; see
`face_images.head`) and check every frame: each face found is matched to the person drawn there, and each person
must carry one track over the whole clip, a different one from everyone else's, through two people crossing paths,
a person leaving for 1 s and coming back, and one of three people hidden for 10 frames; a person replaced by another
at the same place gives the newcomer a new track on the frame they appear. One runs it on a real clip of one person
whose face changes a lot (`real_clip`): she keeps one track.
"""

import numpy as np
import pytest
from face_images import Actor, actor_of, scene
from jsonl import read_jsonl

from mf2.face_identity import DEFAULT_MAX_GAP, FaceIdentities, check_max_gap, crowded_faces

FPS = 25


def box(x: float, y: float, size: float = 100.0) -> list[float]:
    return [x, y, x + size, y + size]


def feature(seed: int, dimension: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dimension)


# --------------------------------------------------------------------------------------------------- boxes alone


def test_two_boxes_crossing_keep_their_tracks_by_motion():
    identities = FaceIdentities()
    seen = []
    for frame in range(40):
        a, b = box(40 + 8 * frame, 100), box(352 - 8 * frame, 130)  # they pass each other at frame 19-20
        seen.append(identities(frame / FPS, [a, b]))
    assert seen == [[1, 2]] * 40


def test_followed_faces_keep_the_track_they_were_followed_from():
    identities = FaceIdentities()
    assert identities(0.0, [box(0, 0), box(300, 0)]) == [1, 2]
    # The faces come back largest first in the other order, and far from where they were: the follower says who.
    assert identities(0.04, [box(500, 0), box(0, 200)], followed_from=[0, 1]) == [1, 2]
    assert identities(0.08, [box(0, 210), box(505, 0)], followed_from=[1, 0]) == [2, 1]


def test_a_person_out_of_sight_comes_back_with_the_track_within_max_gap():
    alice, bob = feature(1), feature(2)
    identities = FaceIdentities()
    assert identities(0.0, [box(0, 0), box(300, 0)], [alice, bob]) == [1, 2]
    assert identities(0.04, [box(300, 0)], [bob]) == [2]  # Alice leaves
    assert identities(1.04, [box(300, 0), box(150, 150)], [bob, alice]) == [2, 1]  # back elsewhere after 1 s
    assert identities(2.0, [box(300, 0)], [bob]) == [2]
    # Alice gone for more than `max_gap`: a new track (numbers are never given twice); Bob, seen since, keeps his.
    assert identities(1.04 + DEFAULT_MAX_GAP + 0.06, [box(150, 150), box(300, 0)], [alice, bob]) == [3, 2]
    assert identities.opened == 3 and sorted(identities.tracks) == [2, 3]


@pytest.mark.parametrize(("spacing", "max_gap"), [(2.5, DEFAULT_MAX_GAP), (1 / FPS, 0.0)])
def test_a_person_seen_on_every_sampled_frame_keeps_one_track_however_far_apart_the_frames(spacing, max_gap):
    """Frames sampled further apart than `max_gap` (`--video-fps 0.4`, `--every-n-frames 100`, `--max-gap 0`): a track
    seen on the last frame is not gone, so it is not closed before the next frame can take it up."""
    identities = FaceIdentities(max_gap=max_gap)
    seen = [identities(k * spacing, [box(100, 100)], [feature(1)], followed_from=[0] if k else None) for k in range(6)]
    assert seen == [[1]] * 6
    assert identities(6 * spacing + max_gap + 0.5, [], []) == [] and identities.tracks  # missed once: still open
    assert identities(7 * spacing + max_gap + 1.0, [box(100, 100)], [feature(1)]) == [2]  # gone longer: a new one


def test_without_features_a_person_comes_back_where_they_were():
    identities = FaceIdentities(max_gap=1.0)
    assert identities(0.0, [box(0, 0)]) == [1]
    assert identities(0.5, [], np.zeros((0, 8))) == []
    assert identities(0.9, [box(5, 3)]) == [1]
    assert identities(1.0, [box(400, 300)]) == [2]  # somewhere else: someone else


def test_a_different_person_at_the_same_place_gets_a_new_track_on_that_frame():
    alice, bob = feature(1), feature(2)
    identities = FaceIdentities()
    for frame in range(10):
        assert identities(frame / FPS, [box(100 + frame, 50)], [alice + 0.1 * feature(10 + frame)], [0]) == [1]
    for frame in range(10, 20):
        assert identities(frame / FPS, [box(100 + frame, 50)], [bob + 0.1 * feature(10 + frame)], [0]) == [2]


def test_a_face_whose_expression_changes_keeps_its_track():
    """An expression changing within half a second: each frame like the one before (0.98), the last one unlike the
    first (about 0) and unlike the track's running feature."""
    alice, bob = feature(1), feature(2)
    identities = FaceIdentities()
    for frame in range(12):
        look = alice / np.linalg.norm(alice) * (1 - frame / 11) + bob / np.linalg.norm(bob) * frame / 11
        assert identities(frame / FPS, [box(100 + frame, 50)], [look], [0] if frame else None) == [1], frame


def test_a_crowded_face_is_paired_by_motion_and_does_not_spoil_its_track():
    alice, bob = feature(1), feature(2)
    identities = FaceIdentities()
    assert identities(0.0, [box(0, 0), box(300, 0)], [alice, bob]) == [1, 2]
    # Bob's head covers Alice's face: her crop looks like him, but she is where her track goes.
    assert crowded_faces(np.array([box(10, 0), box(90, 40)])) == [True, True]
    assert identities(0.04, [box(10, 0), box(90, 40)], [bob, bob], [0, 1]) == [1, 2]
    assert identities(0.08, [box(20, 0), box(300, 0)], [alice, bob]) == [1, 2]  # apart again: her feature is hers
    assert np.dot(identities.tracks[1].feature, alice / np.linalg.norm(alice)) > 0.99


def test_memory_is_bounded_however_long_the_video():
    """A 30-minute video at 25 fps: open tracks are those seen within `max_gap`, and a track's timeline keeps at most
    `MAX_BINS` bins, whose means are still those of the frames they hold."""
    from mf2.cli.track_report import MAX_BINS, VideoTracks

    identities = FaceIdentities()
    tracks = VideoTracks(["AU1", "AU2"], ["neutral", "happiness"])
    frames = 30 * 60 * FPS
    most = 0
    for frame in range(frames):
        time = frame / FPS
        # A new person every 10 s (each with their own look), staying 8 s: at most one on screen.
        person = frame // (10 * FPS)
        faces = [] if frame % (10 * FPS) >= 8 * FPS else [box(100, 100)]
        numbers = identities(time, faces, [feature(person)] if faces else None)
        most = max(most, len(identities.tracks))
        probability = 0.25 + 0.5 * (frame % 2)
        tracks.add(
            time,
            [
                {
                    "track": number,
                    "action_units": {"AU1": probability, "AU2": 0.0},
                    "active_action_units": ["AU1"] if probability > 0.5 else [],
                    "emotion": {"label": "neutral", "score": 1.0},
                }
                for number in numbers
            ],
        )
    assert identities.opened == frames // (10 * FPS) and most <= 2
    assert len(tracks.tracks) == identities.opened
    stats = tracks.tracks[1]
    assert stats.frames == stats.timeline.size == 8 * FPS  # fewer frames than bins: one bin each
    times, means, _ = stats.timeline.bins()
    assert times[0, 0] == 0.0 and times[-1, 1] == (8 * FPS - 1) / FPS and means[:2, 0].tolist() == [0.25, 0.75]
    # Each track's timeline holds what it saw, not 1,024 bins up front: 180 tracks of 200 frames stay small.
    assert sum(stats.timeline.au_sums.nbytes for stats in tracks.tracks.values()) <= 180 * 256 * 2 * 8
    long = VideoTracks(["AU1"], ["neutral"])
    for frame in range(frames):
        long.add(
            frame / FPS,
            [
                {
                    "track": 1,
                    "action_units": {"AU1": (frame % 4) / 4},
                    "active_action_units": [],
                    "emotion": {"label": "neutral", "score": 1.0},
                }
            ],
        )
    timeline = long.tracks[1].timeline
    assert timeline.size <= MAX_BINS and timeline.counts[: timeline.size].sum() == frames
    np.testing.assert_allclose(timeline.bins()[1][:-1, 0], 0.375)  # whole bins hold whole cycles of 4 frames
    assert long.rows("v.mp4")[0]["mean_AU1"] == 0.375 and long.tracks[1].frames == frames


def test_max_gap_is_checked():
    assert check_max_gap(0) == 0.0 and check_max_gap(2) == 2.0
    for bad in (-1, float("nan"), float("inf"), "2", True, None):
        with pytest.raises(ValueError, match="max_gap"):
            check_max_gap(bad)


# --------------------------------------------------------------------------------------------------- real faces


def lerp(a: float, b: float, t: float) -> float:
    return a + (b - a) * t


def crossing_clip() -> tuple[list[Actor], int, tuple[int, int], list]:
    """Two people cross the frame in opposite directions; Hopper passes in front of the astronaut, hiding her for
    about ten frames."""
    count = 60
    actors = [
        Actor("astronaut", lambda f: (lerp(100, 500, f / (count - 1)), 170 + 6 * np.sin(f / 7))),
        Actor("hopper", lambda f: (lerp(500, 100, f / (count - 1)), 230 + 6 * np.cos(f / 9))),
    ]
    return actors, count, (600, 400), []


def leaving_clip():
    """The astronaut slides out of the frame, is gone for 25 frames (1 s), and comes back; Hopper stays."""
    count = 60

    def away(f):
        if f < 15:
            return 420 + 3 * f, 200
        if f < 20:
            return 465 + 25 * (f - 14), 200
        if f < 45:
            return None
        return 430 - 2 * (f - 45), 210

    actors = [
        Actor("hopper", lambda f: (150 + 20 * np.sin(f / 10), 200 + 10 * np.cos(f / 8))),
        Actor("astronaut", away),
    ]
    return actors, count, (640, 400), []


def occlusion_clip():
    """Three people (the astronaut, Hopper, the astronaut's mirror image); a board hides the first for 10 frames."""
    actors = [
        Actor("astronaut", lambda f: (110 + 10 * np.sin(f / 6), 190)),
        Actor("hopper", lambda f: (300, 190 + 10 * np.sin(f / 5))),
        Actor("mirrored", lambda f: (490 - 10 * np.sin(f / 7), 190)),
    ]
    return actors, 50, (600, 380), [(20, 30, (10, 80, 210, 300))]


def replaced_clip():
    """The astronaut for 25 frames, then Hopper on the same path from frame 25 on."""

    def path(f):
        return 300 + 40 * np.sin(f / 12), 200 + 10 * np.sin(f / 9)

    actors = [
        Actor("astronaut", lambda f: path(f) if f < 25 else None),
        Actor("hopper", lambda f: path(f) if f >= 25 else None),
    ]
    return actors, 50, (600, 400), []


CLIPS = {"crossing": crossing_clip, "leaving": leaving_clip, "occlusion": occlusion_clip, "replaced": replaced_clip}


def write_clip(folder, name: str):
    from mf2.video import write_video

    actors, count, size, occluders = CLIPS[name]()
    path = folder / f"{name}.mp4"
    write_video(path, scene(actors, count, size, occluders), fps=FPS)
    return path, actors


def tracks_by_person(results: list[dict], actors: list[Actor]) -> list[dict[int, int]]:
    """Frame by frame, `{person: track}` of the faces found; every face found must be one of the people drawn."""
    frames = []
    for result in results:
        found = {}
        for face in result["faces"]:
            person = actor_of(face["box"], actors, result["frame"])
            assert person is not None, f"frame {result['frame']}: a face where nobody is ({face['box']})"
            assert person not in found, f"frame {result['frame']}: two faces for person {person}"
            found[person] = face["track"]
        frames.append(found)
    return frames


def assert_one_track_each(frames: list[dict[int, int]], people: int, seen_at_least: int) -> None:
    """Every person keeps one track over the clip (0 identity switches), people have different tracks, and each was
    found on at least `seen_at_least` frames (so that the check is not empty)."""
    tracks: dict[int, int] = {}
    for number, found in enumerate(frames):
        for person, track in found.items():
            assert tracks.setdefault(person, track) == track, (
                f"frame {number}: person {person} has track {track}, before {tracks[person]}"
            )
    assert sorted(tracks) == list(range(people)), tracks
    assert len(set(tracks.values())) == people, f"two people share a track: {tracks}"
    for person in range(people):
        assert sum(person in found for found in frames) >= seen_at_least, (person, frames)


@pytest.fixture(scope="module")
def pipe():
    pytest.importorskip("av")
    pytest.importorskip("dlib")
    pytest.importorskip("matplotlib")  # Grace Hopper's portrait
    from transformers import pipeline

    import mf2  # noqa: F401
    from mf2.integration.default_model import resolve_model

    return pipeline("facial-state", model=resolve_model("mf2-base"), device="cpu")


def run(pipe, tmp_path, name: str) -> tuple[list[dict], list[Actor]]:
    path, actors = write_clip(tmp_path, name)
    results = list(pipe.video(path, batch_size=8, multiple_faces="all"))
    assert all(face["track"] is not None for result in results for face in result["faces"])
    return results, actors


def test_two_people_crossing_paths_keep_their_tracks(pipe, tmp_path):
    results, actors = run(pipe, tmp_path, "crossing")
    frames = tracks_by_person(results, actors)
    assert_one_track_each(frames, 2, seen_at_least=40)
    assert sum(0 not in found for found in frames) >= 5  # the astronaut was hidden for a while, and came back


def test_a_person_gone_for_a_second_comes_back_with_the_track(pipe, tmp_path):
    results, actors = run(pipe, tmp_path, "leaving")
    frames = tracks_by_person(results, actors)
    assert_one_track_each(frames, 2, seen_at_least=20)
    gone = [number for number, found in enumerate(frames) if 1 not in found]
    assert min(gone) <= 20 and max(gone) >= 44  # out of sight for the whole second, then found again
    assert any(1 in found for found in frames[45:])


def test_three_people_one_hidden_for_ten_frames_keep_their_tracks(pipe, tmp_path):
    results, actors = run(pipe, tmp_path, "occlusion")
    frames = tracks_by_person(results, actors)
    assert_one_track_each(frames, 3, seen_at_least=30)
    assert all(0 not in found for found in frames[20:30]) and any(0 in found for found in frames[30:])


def test_a_person_replaced_by_another_at_the_same_place_gets_a_new_track(pipe, tmp_path):
    results, actors = run(pipe, tmp_path, "replaced")
    frames = tracks_by_person(results, actors)
    assert_one_track_each(frames, 2, seen_at_least=20)
    assert [list(found) for found in frames] == [[0]] * 25 + [[1]] * 25  # the newcomer's track from their first frame


@pytest.mark.slow
def test_one_person_on_a_real_clip_keeps_one_track(pipe, real_clip):
    """A real clip of one woman crying, a hand over her face, then laughing: her face changes far more over the clip
    than from one frame to the next (mf2-base 2.2's class token, averaged landmarks: 0.528 at the lowest from the frame
    before, above `OTHER_PERSON`), so she keeps one track (with the running feature as the reference she had four)."""
    results = list(pipe.video(real_clip, batch_size=8, multiple_faces="all"))
    tracks = [face["track"] for result in results for face in result["faces"]]
    assert len(results) == 472 and len(tracks) >= 450, (len(results), len(tracks))
    assert set(tracks) == {1}, sorted(set(tracks))


# --------------------------------------------------------------------------------------------------- mf2 analyze


@pytest.fixture(scope="module")
def crossing_run(pipe, tmp_path_factory):
    """`mf2 analyze crossing.mp4 --all-faces -o records.jsonl --summary summary.csv --plot timelines/` (the shipped
    model, loaded by the command itself)."""

    from mf2.cli import main as cli_main

    folder = tmp_path_factory.mktemp("crossing")
    clip, actors = write_clip(folder, "crossing")
    out = folder / "out"
    argv = [
        "analyze",
        str(clip),
        "--all-faces",
        "--no-progress",
        "-o",
        str(out / "records.jsonl"),
        "--summary",
        str(out / "summary.csv"),
        "--plot",
        str(out / "timelines"),
    ]
    assert cli_main(argv) == 0
    records = read_jsonl(out / "records.jsonl")
    return clip, actors, out, records


def test_analyze_records_carry_the_tracks_of_pipe_video(crossing_run):
    _, actors, _, records = crossing_run
    assert records and all(isinstance(record["track"], int) for record in records)
    frames: dict[int, dict] = {}
    for record in records:
        frames.setdefault(record["frame"], {"frame": record["frame"], "faces": []})["faces"].append(record)
    assert_one_track_each(tracks_by_person([frames[k] for k in sorted(frames)], actors), 2, seen_at_least=40)


def test_summary_has_one_row_per_track_with_the_means_of_its_records(crossing_run, pipe):
    import csv

    clip, _, out, records = crossing_run
    with open(out / "summary.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    tracks = sorted({record["track"] for record in records})
    assert [int(row["track"]) for row in rows] == tracks == [1, 2]
    au_names, labels = list(pipe.model.config.au_names), pipe.model.config.emotion_labels
    for row in rows:
        mine = [record for record in records if record["track"] == int(row["track"])]
        assert row["path"] == str(clip) and int(row["frames"]) == len(mine)
        assert float(row["first_time"]) == min(r["time"] for r in mine)
        assert float(row["last_time"]) == max(r["time"] for r in mine)
        for name in au_names:  # records are rounded to 1e-6, the summary too: 1.5e-6 at most apart
            assert float(row[f"mean_{name}"]) == pytest.approx(
                np.mean([r["action_units"][name] for r in mine]), abs=1.5e-6
            )
            assert float(row[f"active_{name}"]) == pytest.approx(
                np.mean([name in r["active_action_units"] for r in mine]), abs=1e-6
            )
        for label in labels:
            assert float(row[f"share_{label}"]) == pytest.approx(
                np.mean([r["emotion"]["label"] == label for r in mine]), abs=1e-6
            )
        assert sum(float(row[f"share_{label}"]) for label in labels) == pytest.approx(1.0, abs=1e-5)


def test_plot_writes_one_timeline_per_track(crossing_run):
    from PIL import Image

    from mf2.cli.analyze_checks import is_annotation

    _, _, out, records = crossing_run
    names = sorted(path.name for path in (out / "timelines").iterdir())
    assert names == [f"crossing_track{track}.png" for track in sorted({r["track"] for r in records})]
    for name in names:
        with Image.open(out / "timelines" / name) as image:
            assert image.format == "PNG" and image.width == 1200 and 500 <= image.height <= 900
            pixels = np.asarray(image.convert("RGB"))
        assert is_annotation(out / "timelines" / name)  # mf2 analyze's mark: a rerun may replace it
        assert (np.abs(pixels.astype(int) - [220, 60, 40]).sum(-1) < 10).any()  # some AU is active (red)


def test_csv_records_have_a_track_column():
    import csv
    import io

    from mf2.cli.analyze_records import RecordWriter

    stream = io.StringIO()
    writer = RecordWriter(stream, "csv", ["AU1"], ["neutral"])
    face = {
        "track": 3,
        "box": [0.0, 0.0, 1.0, 1.0],
        "emotion": {"label": "neutral", "score": 1.0},
        "emotions": [{"label": "neutral", "score": 1.0}],
        "action_units": {"AU1": 0.5},
        "active_action_units": [],
    }
    writer.write_input([{"path": "v.mp4", "frame": 0, "time": 0.0, "face": 0, "faces": 1, **face}])
    writer.write({"path": "photo.png", "face": 0, "faces": 1, **{k: v for k, v in face.items() if k != "track"}})
    rows = list(csv.DictReader(io.StringIO(stream.getvalue())))
    assert writer.columns()[-1] == "track" and [row["track"] for row in rows] == ["3", ""]


@pytest.mark.parametrize(
    "extra, status, message",
    [
        (["--summary", "{d}/clip.mp4"], 2, "--summary {d}/clip.mp4 is the input"),
        (["--summary", "{d}/new.mp4"], 2, "is an image or video name inside the input folder"),
        (["--summary", "{tmp}/out.csv", "-o", "{tmp}/out.csv"], 2, "is the --output file"),
        (["--summary", "-"], 2, "--summary takes a file name"),
        (["--summary", "{tmp}"], 2, "is a folder"),
        (["--plot", "{d}/timelines"], 2, "is, or is inside, the input folder"),
        (["--plot", "{tmp}/annotated", "--annotate", "{tmp}/annotated"], 2, "is the --annotate folder"),
        (["--plot", "{tmp}/plots"], 2, "would overwrite"),
        (["--plot", "{tmp}/a-file.txt"], 2, "--plot takes a folder"),
        (["--summary", "{tmp}/s.csv", "--resume", "-o", "{tmp}/o.jsonl"], 2, "needs one whole run"),
        (["--max-gap", "-1"], 2, "--max-gap: must be a number of seconds >= 0"),
    ],
)
def test_summary_and_plot_are_outputs_kept_away_from_the_inputs(tmp_path, capsys, extra, status, message):
    from mf2.cli import main as cli_main

    folder = tmp_path / "videos"
    folder.mkdir()
    (folder / "clip.mp4").write_bytes(b"not decoded before the checks")
    (tmp_path / "a-file.txt").write_text("x")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "clip_track1.png").write_bytes((folder / "clip.mp4").read_bytes())  # not mf2's PNG
    extra = [value.format(d=folder, tmp=tmp_path) for value in extra]
    assert cli_main(["analyze", str(folder), "--no-progress", *extra]) == status
    assert message.format(d=folder, tmp=tmp_path) in capsys.readouterr().err
    assert (folder / "clip.mp4").read_bytes() == b"not decoded before the checks"
    assert sorted(path.name for path in folder.iterdir()) == ["clip.mp4"]


def test_summary_and_plot_need_a_video(tmp_path, capsys):
    from PIL import Image

    from mf2.cli import main as cli_main

    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    assert cli_main(["analyze", str(tmp_path / "photo.png"), "--summary", str(tmp_path / "s.csv")]) == 2
    assert "none of the inputs is a video" in capsys.readouterr().err


def test_a_timeline_of_unevenly_sampled_frames_has_no_false_gaps_and_shows_a_missed_one():
    """--video-fps 10 on a 25 fps video keeps frames 0.08 s and 0.12 s apart: every sighting's bar must reach the
    next one; a frame where the face was not seen must still show as a gap."""
    from mf2.cli.track_report import VideoTracks, _bar_ends

    times = [round(k * 0.1 / 0.04) * 0.04 for k in range(100)]  # the first 25-fps frame at or after each 1/10 s
    tracks = VideoTracks(["AU1"], ["neutral"])
    for index, time in enumerate(times):
        face = {
            "track": 1,
            "action_units": {"AU1": 0.9},
            "active_action_units": ["AU1"],
            "emotion": {"label": "neutral", "score": 1.0},
        }
        tracks.add(time, [] if index == 50 else [face])  # missed on one frame
    bins, _, _ = tracks.tracks[1].timeline.bins()
    ends = _bar_ends(bins, tracks.step)
    touching = [ends[k] >= bins[k + 1, 0] - 1e-9 for k in range(len(bins) - 1)]
    assert touching.count(False) == 1 and bins[touching.index(False), 1] == times[49]
    tracks.image(1, "uneven", [0.5])  # and it draws
