"""The AudioLibrary service: the shipped clip, imports in every format, refusals that write nothing."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from llmserver.audio.codec import BYTES_PER_SECOND, SIMULATED_TRANSCRIPT, AudioError
from llmserver.audio.library import MANIFEST, AudioLibrary, simulated_clip
from tests.audio_files import dominant_frequency, encode, tone
from tests.conftest import SHIPPED_AUDIO, files_in
from tests.crash import crash_at_every_step


@pytest.fixture
def library(tmp_path) -> AudioLibrary:
    return AudioLibrary(str(tmp_path / "audio"), max_bytes=2_000_000, max_seconds=10)


def test_the_shipped_clip_is_real_speech_named_file(tmp_path):
    library = AudioLibrary(str(tmp_path / "audio"), seed_folder=SHIPPED_AUDIO)
    assert library.active_name() == "file"
    clip = library.get("file")
    assert 2 < clip.duration < 15 and len(clip.pcm) % 2 == 0
    assert "Custom LLM Server" in clip.transcript
    samples = np.frombuffer(clip.pcm, dtype="<i2")
    assert np.abs(samples).max() > 3000  # not silence
    assert os.path.getsize(os.path.join(SHIPPED_AUDIO, "file.pcm")) < 400_000


def test_a_44k_stereo_wav_imports_as_16k_mono_of_the_right_duration(library):
    data = encode(tone(2.5, 44100, channels=2, frequency=1000), 44100, "WAV", "PCM_16")
    clip = library.add("stereo", data, "A tone.")
    assert abs(len(clip.pcm) - 2.5 * BYTES_PER_SECOND) <= 4
    assert abs(dominant_frequency(clip.pcm) - 1000) < 5  # resampled, not sped up or slowed down
    assert library.get("stereo").pcm == clip.pcm


@pytest.mark.parametrize(
    "format,subtype,rate",
    [
        ("WAV", "PCM_16", 8000),
        ("WAV", "PCM_24", 48000),
        ("WAV", "PCM_32", 22050),
        ("WAV", "FLOAT", 16000),
        ("FLAC", "PCM_16", 44100),
        ("OGG", "VORBIS", 48000),
        ("MP3", None, 44100),
    ],
)
def test_every_format_converts_to_16k_mono(library, format, subtype, rate):
    data = encode(tone(1.0, rate, channels=2, frequency=500), rate, format, subtype)
    clip = library.add("converted", data, "Converted.")
    assert abs(clip.duration - 1.0) < 0.06  # MP3 and Vorbis pad a little
    assert abs(dominant_frequency(clip.pcm) - 500) < 10


def test_raw_pcm_is_taken_as_16k_mono(library):
    pcm = (np.arange(16000) % 100).astype("<i2").tobytes()
    clip = library.add("raw", pcm, "Raw.", raw_pcm=True)
    assert clip.pcm == pcm and clip.duration == 1.0


REFUSALS = [
    ("bad", b"this is not audio at all", "text", {}, "file", "could not be decoded"),
    ("bad", b"", "text", {}, "file", "empty"),
    ("bad", b"\x00", "text", {"raw_pcm": True}, "file", "even number"),
    ("bad", encode(tone(0.0, 16000), 16000), "text", {}, "file", "no audio"),
    ("long", encode(tone(11, 16000), 16000), "text", {}, "file", "limit of 10 s"),
    ("big", b"\x00" * 2_000_002, "text", {"raw_pcm": True}, "file", "larger than"),
    ("ok", encode(tone(1, 16000), 16000), "  ", {}, "transcript", "needs a transcript"),
    ("ok", encode(tone(1, 16000), 16000), None, {}, "transcript", "needs a transcript"),
    ("../escape", encode(tone(1, 16000), 16000), "text", {}, "name", "clip name"),
    ("a/b", encode(tone(1, 16000), 16000), "text", {}, "name", "clip name"),
    (".hidden", encode(tone(1, 16000), 16000), "text", {}, "name", "clip name"),
    ("..", encode(tone(1, 16000), 16000), "text", {}, "name", "clip name"),
    ("", encode(tone(1, 16000), 16000), "text", {}, "name", "clip name"),
    ("x" * 65, encode(tone(1, 16000), 16000), "text", {}, "name", "clip name"),
]


@pytest.mark.parametrize("name,data,transcript,options,field,message", REFUSALS)
def test_refusals_write_nothing(library, name, data, transcript, options, field, message):
    library.add("existing", encode(tone(0.5, 16000), 16000), "Existing.")
    before = files_in(library.folder)
    with pytest.raises(AudioError) as refused:
        library.add(name, data, transcript, **options)
    assert refused.value.field == field and message in str(refused.value)
    assert files_in(library.folder) == before
    assert not os.path.exists(os.path.join(os.path.dirname(library.folder), "escape.pcm"))


def test_the_first_clip_becomes_active_and_the_active_clip_changes_only_when_asked(library):
    assert library.active_name() is None and library.active_clip() is None
    library.add("zeta", encode(tone(0.5, 16000), 16000), "Zeta.")
    library.add("alpha", encode(tone(0.5, 16000), 16000), "Alpha.")
    assert library.active_name() == "zeta"
    library.add("file", encode(tone(0.5, 16000), 16000), "File.", activate=True)
    assert library.active_name() == "file"
    library.activate("zeta")
    assert library.active_clip().transcript == "Zeta."
    assert [c["name"] for c in library.list() if c["active"]] == ["zeta"]


def test_deleting_the_active_clip_leaves_no_clip_and_unknown_names_are_404(library):
    library.add("only", encode(tone(0.5, 16000), 16000), "Only.", activate=True)
    library.add("other", encode(tone(0.5, 16000), 16000), "Other.")
    library.delete("only")
    assert library.active_clip() is None  # the endpoint simulates rather than playing another clip
    assert [c["name"] for c in library.list()] == ["other"]
    for action in (library.delete, library.activate, library.get, library.wav):
        with pytest.raises(AudioError) as missing:
            action("only")
        assert missing.value.status == 404


def test_a_clip_already_read_keeps_its_bytes_when_replaced_or_deleted(library):
    library.add("speech", encode(tone(1, 16000, frequency=300), 16000), "First.")
    playing = library.get("speech")
    first_bytes = playing.pcm
    library.add("speech", encode(tone(2, 16000, frequency=900), 16000), "Second.")
    assert library.get("speech").transcript == "Second." and playing.pcm == first_bytes
    library.delete("speech")
    assert playing.pcm == first_bytes and playing.chunks_base64


def test_a_reopened_library_is_the_same_and_holds_no_stray_files(library):
    library.add("one", encode(tone(1, 16000, frequency=300), 16000), "One.")
    library.add("two", encode(tone(1, 16000, frequency=600), 16000), "Two.", activate=True)
    library.add("one", encode(tone(1, 16000, frequency=900), 16000), "One, again.")
    library.delete("two")
    again = AudioLibrary(library.folder)
    assert again.list() == library.list() and again.get("one").pcm == library.get("one").pcm
    # One manifest and one audio file per clip: replaced and deleted audio is gone.
    assert sorted(os.listdir(library.folder)) == sorted(
        [MANIFEST, *(e.audio_file for e in again._state.clips.values())]
    )


def test_the_older_layout_is_imported(tmp_path):
    folder = tmp_path / "audio"
    folder.mkdir()
    pcm = (np.arange(3200) % 50).astype("<i2").tobytes()
    (folder / "greeting.pcm").write_bytes(pcm)
    (folder / "greeting.txt").write_text("Hello there.\n")
    (folder / "other.pcm").write_bytes(pcm[:640])
    (folder / "other.txt").write_text("Other.")
    (folder / "active.json").write_text('{"active": "other"}')
    library = AudioLibrary(str(folder), seed_folder=SHIPPED_AUDIO)
    assert library.names() == ["greeting", "other"] and library.active_name() == "other"
    assert library.get("greeting").pcm == pcm and library.get("greeting").transcript == "Hello there."


REPLACE_CLIP = """
library.add("voice", bytes(range(200)) * 64, "The second version.", raw_pcm=True)
"""
DELETE_CLIP = """
library.delete("voice")
"""


@pytest.mark.parametrize("change", [REPLACE_CLIP, DELETE_CLIP], ids=["replace", "delete"])
def test_a_crash_at_any_step_leaves_the_old_clip_or_the_new_never_a_mix(tmp_path, change):
    """Kills the process (os._exit) at each file-system step of a change in turn: whatever step it dies at, the
    reopened library pairs each transcript with its own audio, and holds no stray files."""
    folder = tmp_path / "audio"
    first = (np.arange(8000) % 300).astype("<i2").tobytes()
    AudioLibrary(str(folder)).add("voice", first, "The first version.", raw_pcm=True)
    pristine = files_in(folder)
    outcomes = set()
    for crashed in crash_at_every_step(f"library = AudioLibrary({str(folder)!r})", change, folder, pristine):
        library = AudioLibrary(str(folder))
        names = library.names()
        if "voice" in names:
            clip = library.get("voice")
            state = (clip.transcript, clip.pcm)
            assert state in {("The first version.", first), ("The second version.", bytes(range(200)) * 64)}
            outcomes.add(state[0])
        else:
            outcomes.add("deleted")
        assert not [entry for entry in os.listdir(folder) if entry.startswith(".tmp-")]
        expected = {MANIFEST, *(e.audio_file for e in library._state.clips.values())}
        assert set(os.listdir(folder)) == expected, f"stray files after a crash at step {crashed}"
    assert len(outcomes) == 2  # some crashes came before the commit, some after


def test_wav_export_round_trips(library, tmp_path):
    clip = library.add("clip", encode(tone(1, 16000), 16000), "Clip.")
    wav = library.wav("clip")
    assert wav[:4] == b"RIFF"
    again = library.add("again", wav, "Again.")
    assert again.pcm == clip.pcm


def test_simulated_clip_is_a_quiet_short_tone():
    clip = simulated_clip()
    samples = np.frombuffer(clip.pcm, dtype="<i2")
    assert clip.simulated and clip.transcript == SIMULATED_TRANSCRIPT
    assert clip.duration == 1.0 and 0 < np.abs(samples).max() < 0.15 * 32767


def test_no_folder_is_an_empty_library(tmp_path):
    library = AudioLibrary(str(tmp_path / "missing"))
    assert library.list() == [] and library.active_clip() is None
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_refusal_messages_speak_to_the_operator(library):
    with pytest.raises(AudioError) as undecodable:
        library.add("x", b"this is not audio at all", "text")
    assert "BytesIO" not in str(undecodable.value) and "not recognised" in str(undecodable.value).lower()
    with pytest.raises(AudioError) as too_long:  # a compressed file is measured from its header, not decoded
        library.add("x", encode(tone(11, 8000), 8000, "OGG", "VORBIS"), "text")
    assert str(too_long.value).startswith("The clip is 11.0 s long")
