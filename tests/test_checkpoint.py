"""
Tests for model.py's checkpoint saves: a save interrupted at any point (an error, or the process killed) leaves
the previous checkpoint or the new one, never nothing and never a mix; recover_checkpoint puts it back in place
and removes what the interrupted save left, except what belongs to a process still running or to another name.

    python -m pytest -q tests/test_checkpoint.py
"""
import errno
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import model as model_module
import tokenizer as tokenizer_module
from model import Config, Transformer, _process_running_since, load_checkpoint, recover_checkpoint, save_checkpoint
from tokenizer import toy_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = toy_tokenizer()
OLD = Transformer(Config(vocab_size=TOK.vocab_size)).init_weights(0)
NEW = Transformer(Config(vocab_size=TOK.vocab_size)).init_weights(1)
STATE_TEXT = "trainer state " * 1000


@pytest.fixture(autouse=True)
def no_git(monkeypatch):
    monkeypatch.setattr(model_module, "git_commit", lambda: "test")


def save(out, which, extra_writer=None):
    """Save OLD or NEW with meta and an extra file that name it, as a training run saves its state."""
    def write_state(path):
        with open(path, "w") as f:
            f.write(f"{which}:{STATE_TEXT}")
    model = {"old": OLD, "new": NEW}[which]
    save_checkpoint(out, model, TOK, {"stage": which}, extra_files={"state.txt": extra_writer or write_state})


def loaded_version(out):
    """"old" or "new": which save load_checkpoint returns, after checking that all its files agree."""
    model, _, meta = load_checkpoint(out)
    which = meta["stage"]
    expected = {"old": OLD, "new": NEW}[which].state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    assert (out / "state.txt").read_text() == f"{which}:{STATE_TEXT}"
    return which


def strays(directory):
    return sorted(p for p in os.listdir(directory) if ".tmp" in p or ".old" in p)


class Interrupt:
    """Counts the steps of a save that a kill can fall between (renames, deletions, flushes, file writes) and
    raises at step `at`, leaving the disk as a kill there would: a deletion or a file write stops half done."""

    def __init__(self, monkeypatch, at=None):
        self.at, self.steps = at, 0
        rename, rmtree, fsync, save_file = os.rename, shutil.rmtree, os.fsync, model_module.save_file

        def partial_rmtree(path, *args, **kwargs):
            for directory, _, files in os.walk(path):
                for name in files[:1]:
                    os.remove(os.path.join(directory, name))
                break

        monkeypatch.setattr(os, "rename", self.step(rename))
        monkeypatch.setattr(shutil, "rmtree", self.step(rmtree, before_failing=partial_rmtree))
        monkeypatch.setattr(os, "fsync", self.step(fsync))
        monkeypatch.setattr(model_module, "save_file", self.step(save_file))
        monkeypatch.setattr(model_module, "open", self.step(open), raising=False)
        monkeypatch.setattr(tokenizer_module, "open", self.step(open), raising=False)

    def step(self, function, before_failing=None):
        def interrupted(*args, **kwargs):
            self.steps += 1
            if self.steps == self.at:
                if before_failing:
                    before_failing(*args, **kwargs)
                raise OSError(errno.ENOSPC, f"interrupted at step {self.at}")
            return function(*args, **kwargs)
        return interrupted

    def write_state_in_two_steps(self, which):
        def write(path):
            with open(path, "w") as f:
                f.write(f"{which}:")
                self.step(lambda: None)()
                f.write(STATE_TEXT)
        return write


def count_save_steps(tmp_path):
    save(tmp_path / "count", "old")
    with pytest.MonkeyPatch.context() as monkeypatch:
        counter = Interrupt(monkeypatch)
        save(tmp_path / "count", "new", counter.write_state_in_two_steps("new"))
    return counter.steps


@pytest.mark.parametrize("then", ["load", "save"])
def test_save_interrupted_at_any_step_leaves_the_old_or_the_new_checkpoint(tmp_path, then):
    n_steps = count_save_steps(tmp_path)
    assert n_steps > 15  # files written and flushed, two renames, a deletion: every one is a step
    versions = []
    for at in range(1, n_steps + 1):
        out = tmp_path / f"at{at}" / "ck"
        save(out, "old")
        with pytest.MonkeyPatch.context() as monkeypatch:
            interrupt = Interrupt(monkeypatch, at)
            with pytest.raises(OSError, match=f"interrupted at step {at}$"):
                save(out, "new", interrupt.write_state_in_two_steps("new"))
        if then == "save":  # the next save recovers first, then replaces whatever was recovered
            save(out, "new")
            assert strays(out.parent) == [] and loaded_version(out) == "new"
            continue
        versions.append(loaded_version(out))
        assert strays(out.parent) == []
        save(out, "new")  # a save after an interrupted one works
        assert strays(out.parent) == [] and loaded_version(out) == "new"
    if then == "load":
        # the old checkpoint until the first rename of the swap, the new one from then on
        assert versions == ["old"] * versions.index("new") + ["new"] * (n_steps - versions.index("new"))
        assert versions.count("new") >= 3


def test_first_save_interrupted_at_any_step_leaves_nothing_or_the_checkpoint(tmp_path):
    with pytest.MonkeyPatch.context() as monkeypatch:
        counter = Interrupt(monkeypatch)
        save(tmp_path / "count", "new")  # a first save has no old checkpoint to move aside
    for at in range(1, counter.steps + 1):
        out = tmp_path / f"at{at}" / "ck"
        with pytest.MonkeyPatch.context() as monkeypatch:
            Interrupt(monkeypatch, at)
            with pytest.raises(OSError):
                save(out, "new")
        if os.path.exists(out):
            assert loaded_version(out) == "new"
        else:
            with pytest.raises(ValueError, match="does not exist"):
                load_checkpoint(out)
        assert strays(out.parent) == []


def cut_swap(out, pid):
    """The disk as a save by process pid leaves it when killed between its two renames."""
    save(out, "old")
    os.rename(out, f"{out}.old{pid}")
    save(out.parent / "new", "new")
    os.rename(out.parent / "new", f"{out}.tmp{pid}")


def test_recovery_interrupted_at_any_step_can_be_run_again(tmp_path):
    dead = dead_pid()
    at, finished = 0, False
    while not finished:
        at += 1
        out = tmp_path / f"at{at}" / "ck"
        cut_swap(out, dead)
        with pytest.MonkeyPatch.context() as monkeypatch:
            Interrupt(monkeypatch, at)
            try:
                recover_checkpoint(out)
                finished = True
            except OSError:
                pass
        assert loaded_version(out) == "new" and strays(out.parent) == []
    assert at > 2  # rename, flush, deletion


def dead_pid():
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: the pid belongs to no process
    return child.pid


def test_recover_each_state_an_interrupted_save_leaves(tmp_path):
    dead = dead_pid()
    save(tmp_path / "old", "old")
    save(tmp_path / "new", "new")

    def state(name, out=None, old=None, tmp=None):
        ck = tmp_path / name / "ck"
        ck.parent.mkdir()
        for version, path in ((out, ck), (old, f"{ck}.old{dead}"), (tmp, f"{ck}.tmp{dead}")):
            if version:
                shutil.copytree(tmp_path / version, path)
        return ck

    # out missing, the swap cut between its renames: the new copy was complete before the swap began
    assert loaded_version(state("cut", old="old", tmp="new")) == "new"
    # out missing, no new copy beside the old one: the old one goes back
    assert loaded_version(state("old-only", old="old")) == "old"
    # the swap finished but the old copy was not deleted
    assert loaded_version(state("done", out="new", old="old")) == "new"
    # killed while writing, before the swap: the new copy may be incomplete and is never used
    half_written = state("writing", out="old", tmp="new")
    os.remove(f"{half_written}.tmp{dead}/meta.json")
    assert loaded_version(half_written) == "old"
    # a first save killed before its rename: nothing to load
    first = state("first", tmp="new")
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(first)
    for name in ("cut", "old-only", "done", "writing", "first"):
        assert strays(tmp_path / name) == []


def test_temporaries_of_running_processes_and_other_names_are_left_alone(tmp_path):
    dead = dead_pid()
    running = subprocess.Popen(["sleep", "60"])
    try:
        out = tmp_path / "ck"
        save(tmp_path / f"ck.old{running.pid}", "old")  # mid-swap in another process: not ours to finish
        save(tmp_path / f"ck.tmp{running.pid}", "new")
        others = [f"ck2.tmp{dead}", f"ck.tmp{dead}x", "ck.tmpx", "ck.tmp", f"ck.bak{dead}", f"ck.tmp.old{dead}"]
        for name in others:
            (tmp_path / name).mkdir()
        (tmp_path / f"ck.tmp{dead}").mkdir()
        with pytest.raises(ValueError, match="does not exist"):
            load_checkpoint(out)
        assert sorted(os.listdir(tmp_path)) == sorted(others + [f"ck.old{running.pid}", f"ck.tmp{running.pid}"])
        save(out, "new")
        assert loaded_version(out) == "new"
        assert sorted(os.listdir(tmp_path)) == sorted(others + [f"ck.old{running.pid}", f"ck.tmp{running.pid}", "ck"])
    finally:
        running.kill()
        running.wait()
    recover_checkpoint(out)  # its owner is gone now
    assert sorted(os.listdir(tmp_path)) == sorted(others + ["ck"])


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="telling a reused pid apart needs /proc")
def test_a_pid_reused_by_a_later_process_does_not_protect_a_temporary():
    running = subprocess.Popen(["sleep", "60"])
    try:
        assert _process_running_since(running.pid, time.time() + 5)
        assert not _process_running_since(running.pid, time.time() - 3600)  # made before this process began
    finally:
        running.kill()
        running.wait()
    assert not _process_running_since(running.pid, time.time())
    assert not _process_running_since(os.getpid(), time.time())  # this process is not inside a save


def test_every_file_and_directory_is_flushed_before_it_is_renamed(tmp_path, monkeypatch):
    out = tmp_path / "ck"
    save(out, "old")
    events, fsync, rename = [], os.fsync, os.rename

    def recording_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def recording_rename(src, dst):
        events.append(("rename", str(src), str(dst)))
        return rename(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "rename", recording_rename)
    save(out, "new")
    out, tmp = os.path.realpath(out), os.path.realpath(f"{out}.tmp{os.getpid()}")
    renames = [i for i, event in enumerate(events) if event[0] == "rename"]
    assert [events[i][1:] for i in renames] == [(out, f"{out}.old{os.getpid()}"), (tmp, out)]
    flushed_first = {event[1] for event in events[:renames[0]]}
    assert flushed_first == {os.path.join(tmp, name) for name in os.listdir(out)} | {tmp}
    assert ("fsync", os.path.dirname(out)) in events[renames[-1]:]


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_killed_between_the_renames_the_new_checkpoint_is_recovered(tmp_path):
    out, ready = tmp_path / "ck", tmp_path / "ready"
    save(out, "old")
    child_code = f"""
import os, sys, time
sys.path.insert(0, {ROOT!r})
from model import Config, Transformer, save_checkpoint
from tokenizer import toy_tokenizer
rename = os.rename
def rename_then_wait(src, dst):
    rename(src, dst)
    if str(dst).endswith(".old%d" % os.getpid()):
        open({str(ready)!r}, "w").close()
        time.sleep(60)
os.rename = rename_then_wait
tok = toy_tokenizer()
write_state = lambda path: open(path, "w").write("new:" + {STATE_TEXT!r})
save_checkpoint({str(out)!r}, Transformer(Config(vocab_size=tok.vocab_size)).init_weights(1), tok, {{"stage": "new"}},
                extra_files={{"state.txt": write_state}})
"""
    child = subprocess.Popen([sys.executable, "-c", child_code])
    try:
        deadline = time.time() + 120  # bounded, so a broken child cannot hang the test
        while not ready.exists() and child.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert ready.exists(), "the child never reached the swap"
        assert not out.exists()  # killed here, a save without recovery would leave nothing to load
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert loaded_version(out) == "new"
    assert strays(tmp_path) == []
