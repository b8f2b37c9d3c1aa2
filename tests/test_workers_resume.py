"""Search at scale: two workers on one PostgreSQL study, and SIGKILL-then-resume.

The PostgreSQL test starts a throwaway server from Debian's packages on 127.0.0.1 (as the
``postgres`` user when run as root) and skips, with the reason, when the server binaries are
missing."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from hwsearch.core import records

pytestmark = pytest.mark.slow
SMALL = ["--model", "hwsearch.zoo:mnist1d_cnn_small", "--samples", "2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hwsearch.cli", "search", *SMALL, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _pg_bindir() -> str | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(d, "initdb")):
            return d
    return None


@pytest.fixture
def postgres(tmp_path):
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found: apt-get install postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 not installed: pip install -e '.[test]'")
    # pytest's tmp dirs are private to root; the server's user needs a directory it can reach
    base = Path(tempfile.mkdtemp(prefix="hwsearch-pg-"))
    os.chmod(base, 0o755)
    data = base / "data"
    data.mkdir()
    port = _free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the server as Debian's postgres user
        shutil.chown(data, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(as_user + [f"{bindir}/initdb", "-D", str(data), "-A", "trust", "-U", "hw"], check=True,
                   capture_output=True)
    proc = subprocess.Popen(as_user + [f"{bindir}/postgres", "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                                       "-k", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"postgresql://hw@127.0.0.1:{port}/postgres"
    deadline = time.time() + 30
    import sqlalchemy
    while True:
        try:
            sqlalchemy.create_engine(url).connect().close()
            break
        except Exception:
            if time.time() > deadline:
                proc.kill()
                pytest.fail("PostgreSQL did not start within 30 s")
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    shutil.rmtree(base, ignore_errors=True)


def test_two_workers_share_one_postgres_study(tmp_path, postgres):
    trials = 10
    common = ["--storage", postgres, "--rounds", "1", "--trials", str(trials), "--measure-top-k", "1",
              "--max-accuracy-drop", "1"]
    a = _cli(*common, "--worker", "a", "--out", str(tmp_path / "a"), "--seed", "1")
    b = _cli(*common, "--worker", "b", "--out", str(tmp_path / "b"), "--seed", "2")
    outs = [p.communicate(timeout=900)[0] for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    st = optuna.load_study(study_name="hwsearch-round1", storage=postgres)
    done = [t for t in st.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 * trials                                   # the sum of both workers' trials
    assert len({t.number for t in st.trials}) == len(st.trials)      # no duplicate trials
    assert {t.user_attrs["worker"] for t in done} == {"a", "b"}
    shared = records.StudyRecords(optuna.storages.RDBStorage(postgres), "hwsearch").load()
    assert len(shared) >= 2
    # each worker's local mirror holds what it measured; the database holds both
    mirrored = records.load(tmp_path / "a" / "measurements.jsonl") + records.load(tmp_path / "b" / "measurements.jsonl")
    assert sorted(json.dumps(r, sort_keys=True) for r in mirrored) == sorted(json.dumps(r, sort_keys=True) for r in shared)


def test_sigkill_mid_round_then_resume_loses_nothing(tmp_path):
    out = tmp_path / "out"
    args = ["--out", str(out), "--rounds", "2", "--trials", "12", "--measure-top-k", "2", "--max-accuracy-drop", "1"]
    p = _cli(*args)
    rec_path = out / "measurements.jsonl"
    deadline = time.time() + 600
    def measured_in_a_round() -> bool:  # round 0 is the dense baseline, recorded before any trial
        return rec_path.exists() and any(json.loads(line)["round"] >= 1
                                         for line in rec_path.read_text().splitlines() if line.strip())

    while time.time() < deadline and not measured_in_a_round():
        time.sleep(0.2)
        assert p.poll() is None, p.communicate()[0]
    os.kill(p.pid, signal.SIGKILL)  # mid-round: the round's first measurement landed, others pending
    p.wait()
    storage = f"sqlite:///{out / 'study.db'}"
    before_trials = {(t.number, tuple(t.values)) for t in optuna.load_study(
        study_name="hwsearch-round1", storage=storage).trials if t.state == optuna.trial.TrialState.COMPLETE}
    before_recs = records.load(rec_path)
    assert before_recs and len(before_trials) == 12
    q = _cli(*args)
    log = q.communicate(timeout=900)[0]
    assert q.returncode == 0, log
    st1 = optuna.load_study(study_name="hwsearch-round1", storage=storage)
    after_trials = {(t.number, tuple(t.values)) for t in st1.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert before_trials <= after_trials and len(after_trials) == 12    # nothing lost, nothing redone
    after_recs = records.load(rec_path)
    assert after_recs[:len(before_recs)] == before_recs                 # records kept, in order
    keys = [(r["round"], r["plan_key"]) for r in after_recs]
    assert len(keys) == len(set(keys))                                  # no plan measured twice
    assert {r["round"] for r in after_recs} == {0, 1, 2}                # the loop went on to round 2 (0: dense baseline)
