"""The fleet (tinytrain/fleet/): integer-exact aggregation against a big-integer reference, the
rejection of garbage updates, a state of another model refused by the device, the seed replay of
the zeroth-order fleet keeping every device bit-identical to the server, checkpoints and resume,
and a Flower Deployment-Runtime federation (SuperLink + 3 SuperNodes on 127.0.0.1)."""
import shutil
import struct
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tinytrain.compiler.errors import TinytrainError
from tinytrain.fleet import state as st
from tinytrain.fleet.partition import dirichlet_partition

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "mcu_cnn_mnist.onnx"
DATA = ROOT / "models" / "data"

try:
    import flwr  # noqa: F401
    HAVE_FLWR = True
except ImportError:
    HAVE_FLWR = False
needs_flwr = pytest.mark.skipif(not HAVE_FLWR, reason="flwr is not installed (pip install '.[fleet]')")


def toy_manifest(limit_b=1000):
    return st.Manifest({"signature": 0x12345678, "state": 24 + 8 + 16, "tensors": [
        {"name": "w", "dtype": "int8", "size": 6, "limit": 127, "offset": 24},
        {"name": "b", "dtype": "int32", "size": 3, "limit": limit_b, "offset": 32}]})


def ref_round(num):
    """Fraction -> nearest integer, halves away from zero (the documented rule), by plain arithmetic."""
    fl = num.numerator // num.denominator
    frac = num - fl
    if frac > Fraction(1, 2) or (frac == Fraction(1, 2) and num > 0):
        return fl + 1
    return fl


def ref_aggregate(m, g, updates, rule):
    out = []
    for j, t in enumerate(m.tensors):
        vals = []
        for i in range(t["size"]):
            ds = [int(a[j][i]) - int(g[j][i]) for a, _ in updates]
            if rule == "fedavg":
                q = ref_round(Fraction(sum(d * n for d, (_, n) in zip(ds, updates)), sum(n for _, n in updates)))
            elif rule == "median":
                s = sorted(ds)
                q = s[len(s) // 2] if len(s) % 2 else ref_round(Fraction(s[len(s) // 2 - 1] + s[len(s) // 2], 2))
            else:
                k = int(rule[5:])
                s = sorted(ds)[k:len(ds) - k]
                q = ref_round(Fraction(sum(s), len(s)))
            vals.append(max(-t["limit"], min(t["limit"], int(g[j][i]) + q)))
        out.append(vals)
    return out


def test_round_half_away_from_zero():
    assert [st.round_div(n, 2) for n in (-3, -1, 1, 3, 2)] == [-2, -1, 1, 2, 1]
    assert st.round_div(-5, 3) == -2 and st.round_div(5, 3) == 2 and st.round_div(4, 3) == 1
    assert st.round_div(10 ** 30 + 1, 2) == 10 ** 30 // 2 + 1          # Python ints: no overflow


@pytest.mark.parametrize("rule", ["fedavg", "median", "trim:1"])
def test_aggregation_exact_and_in_range(rule):
    rng = np.random.default_rng(5)
    m = toy_manifest(limit_b=1000)
    for trial in range(40):
        g = [rng.integers(-127, 128, 6).astype(np.int8), rng.integers(-1000, 1001, 3).astype(np.int32)]
        ups = []
        for c in range(int(rng.integers(3, 7))):
            w = np.clip(g[0].astype(int) + rng.integers(-200, 201, 6), -127, 127).astype(np.int8)
            b = np.clip(g[1].astype(int) + rng.integers(-3000, 3001, 3), -1000, 1000).astype(np.int32)
            ups.append(([w, b], int(rng.integers(1, 500))))
        new = st.aggregate(m, g, ups, rule)
        assert [a.dtype for a in new] == [np.int8, np.int32]
        assert [a.tolist() for a in new] == ref_aggregate(m, g, ups, rule), (rule, trial)
        assert np.abs(new[0].astype(int)).max() <= 127 and np.abs(new[1].astype(int)).max() <= 1000


def test_aggregation_saturates_to_the_bias_limit_of_large_int32():
    lim = 2142240767                                        # a real classifier's bias limit
    m = toy_manifest(limit_b=lim)
    g = [np.zeros(6, np.int8), np.array([lim - 5, -lim + 5, 0], np.int32)]
    ups = [([np.full(6, 127, np.int8), np.array([lim, -lim, lim], np.int32)], 1 << 19)] * 3
    new = st.aggregate(m, g, ups, "fedavg")
    assert new[0].tolist() == [127] * 6 and new[1].tolist() == [lim, -lim, lim]


def test_norm_clipping_bounds_a_boosted_client():
    m = toy_manifest()
    g = [np.zeros(6, np.int8), np.zeros(3, np.int32)]
    honest = [([np.full(6, 2, np.int8), np.full(3, 10, np.int32)], 10) for _ in range(4)]
    evil = ([np.full(6, 127, np.int8), np.full(3, 1000, np.int32)], 10)
    plain = st.aggregate(m, g, honest + [evil], "fedavg")
    clipped = st.aggregate(m, g, honest + [evil], "fedavg", clip=1.0)
    assert plain[0][0] == 27 and clipped[0][0] == 2 and clipped[1][0] == 10


def test_garbage_updates_are_rejected():
    from tinytrain.fleet.app import decode_update
    m = toy_manifest()
    good = {"round": 3, "signature": m.signature, "n": 5, "crc": 0, "u0": np.zeros(6, np.int8).tobytes(),
            "d0": "int8", "u1": np.zeros(3, np.int32).tobytes(), "d1": "int32"}
    arrays, n = decode_update(m, good, 3)
    assert n == 5 and arrays[1].dtype == np.int32
    bad = {"non-finite": dict(good, u0=np.full(6, np.nan, np.float32).tobytes(), d0="float32"),
           "signature": dict(good, signature=m.signature ^ 1),
           "values": dict(good, u0=np.zeros(5, np.int8).tobytes()),
           "bytes": dict(good, u1=good["u1"][:-1]),
           "outside": dict(good, u1=np.array([0, 1001, 0], np.int32).tobytes()),
           "round": dict(good, round=2),
           "sample count": dict(good, n=0),
           "unknown": dict(good, d0="object"),
           "more tensors": dict(good, u2=b"x", d2="int8")}
    for what, cfg in bad.items():
        with pytest.raises(TinytrainError):
            decode_update(m, cfg, 3)


def test_dirichlet_partition():
    y = np.load(DATA / "fmnist_train.npz")["y"]
    a = dirichlet_partition(y, 20, 0.1, seed=3)
    assert [p.tolist() for p in a] == [p.tolist() for p in dirichlet_partition(y, 20, 0.1, seed=3)]
    assert sorted(np.concatenate(a).tolist()) == list(range(len(y)))
    assert min(len(p) for p in a) >= 2

    def skew(parts):          # mean share of a client's most frequent label
        return np.mean([np.bincount(y[p]).max() / len(p) for p in parts])
    assert skew(a) > skew(dirichlet_partition(y, 20, 0.5, seed=3)) > skew(dirichlet_partition(y, 20, 10, seed=3))
    with pytest.raises(TinytrainError):
        dirichlet_partition(y, 20, 0.0)


def test_checkpoint_atomic_and_checked(tmp_path):
    m = toy_manifest()
    blob = m.write(bytes(24) + bytes(24), [np.ones(6, np.int8), np.ones(3, np.int32)])
    blob = bytearray(blob)
    struct.pack_into("<III", blob, 0, 0x54544C53, m.signature, m.state_size)
    blob = st.seal(bytes(blob))
    p = tmp_path / "ck.bin"
    assert st.load_checkpoint(p, m) is None
    st.save_checkpoint(p, blob, 7)
    got, r, _ = st.load_checkpoint(p, m)
    assert got == blob and r == 7 and not (tmp_path / "ck.bin.tmp").exists()
    raw = bytearray(p.read_bytes())
    raw[-1] ^= 1
    p.write_bytes(bytes(raw))
    with pytest.raises(TinytrainError):
        st.load_checkpoint(p, m)


# ------------------------------------------------------------------ with the compiled model

@pytest.fixture(scope="module")
def bp_build(tmp_path_factory):
    from tinytrain.fleet.device import prepare
    out = tmp_path_factory.mktemp("fleet_bp")
    prepare(out, MODEL, DATA / "mnist_calib.npz", DATA / "fmnist_train.npz", DATA / "fmnist_test.npz",
            update="classifier", clients=3, alpha=0.5, max_train=300, max_test=100)
    return out


@pytest.fixture(scope="module")
def zo_build(tmp_path_factory):
    from tinytrain.fleet.device import prepare
    out = tmp_path_factory.mktemp("fleet_zo")
    prepare(out, MODEL, DATA / "mnist_calib.npz", DATA / "fmnist_train.npz", DATA / "fmnist_test.npz",
            update="bias", clients=3, alpha=0.5, max_train=300, max_test=100, trainer="mezo", lr=1e-4)
    return out


def test_device_refuses_a_state_of_another_model(bp_build):
    from tinytrain.fleet.device import Device
    dev = Device(bp_build)
    blob = dev.initial_blob()
    m = dev.manifest
    m.check_blob(blob)
    dev.restore(blob)
    other = bytearray(blob)
    struct.pack_into("<I", other, 4, m.signature ^ 0x100)
    other = st.seal(bytes(other))                     # well sealed, but for another model
    with pytest.raises(TinytrainError, match="refused"):
        dev.restore(other)
    with pytest.raises(TinytrainError):
        m.check_blob(other)
    flipped = bytearray(blob)
    flipped[m.tensors[0]["offset"]] ^= 1              # a flipped bit: the CRC no longer matches
    with pytest.raises(TinytrainError, match="refused"):
        dev.restore(bytes(flipped))
    with pytest.raises(TinytrainError):
        dev.restore(blob[:-8])


@needs_flwr
def test_in_process_federation_rejects_garbage_and_resumes(bp_build, tmp_path):
    from tinytrain.fleet.app import InProcessGrid, Server
    ck = tmp_path / "ck.bin"
    logs = []
    srv = Server(bp_build, rounds=2, steps=10, checkpoint=ck, eval_samples=50, log=logs.append)
    b2 = srv.run(InProcessGrid(bp_build, 3, faults={1: "nan", 2: "crash@2"}))
    assert [h["accepted"] for h in srv.history[1:]] == [2, 1]
    assert [(r, n) for r, n, _ in srv.rejected] == [(1, 2), (2, 2)]          # node 2 = partition 1
    assert all("non-finite" in why for _, _, why in srv.rejected)
    assert st.load_checkpoint(ck, srv.m)[:2] == (b2, 2)
    # a restarted server resumes after round 2 and ends where an uninterrupted run ends
    srv3 = Server(bp_build, rounds=3, steps=10, checkpoint=ck, eval_samples=50, log=logs.append)
    b3 = srv3.run(InProcessGrid(bp_build, 3, faults={1: "nan", 2: "crash@2"}))
    assert [h["round"] for h in srv3.history] == [3]
    full = Server(bp_build, rounds=3, steps=10, eval_samples=50, log=logs.append)
    assert full.run(InProcessGrid(bp_build, 3, faults={1: "nan", 2: "crash@2"})) == b3
    srv.m.check_blob(b3)


@needs_flwr
def test_zo_seed_replay_keeps_devices_bit_identical(zo_build):
    from tinytrain.fleet.app import InProcessGrid, Server
    from tinytrain.fleet.device import Device
    srv = Server(zo_build, rounds=3, steps=6, k=16, eval_samples=50, log=lambda s: None)
    grid = InProcessGrid(zo_build, 3, faults={2: "range"})
    final = srv.run(grid)
    assert [h["accepted"] for h in srv.history[1:]] == [2, 2, 2]
    assert [h["rejected"] for h in srv.history[1:]] == [1, 1, 1]
    # every client that took part holds the state it rebuilt itself from the seeds: the server's
    # state at the start of round 3, bit for bit (the server rejects pairs from a device that differs)
    start3 = srv.history[2]["crc"]
    for node in (1, 2):
        mem = grid.contexts[node].state["tt"]
        assert int(mem["round"]) == 3 and st.crc(bytes(mem["blob"])) == start3
    assert final != bytes(grid.contexts[1].state["tt"]["blob"])       # round 3 moved the state on
    # downlink after round 1: the merged pairs, not the state
    assert srv.history[2]["down_bytes"] < srv.m.state_size and srv.history[1]["up_bytes"] <= 6 * 6 + 40
    Device(zo_build).restore(final)                   # the replayed state is a valid blob of the ZO library


@needs_flwr
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_deployment_runtime_federation(bp_build, tmp_path):
    """SuperLink + 3 SuperNodes as processes on 127.0.0.1: 3 rounds; node 1 sends garbage, node 2 is
    killed in round 2; every round completes with the rest, and each device restored the server's state."""
    from tinytrain.fleet.deploy import LocalDeployment
    from tinytrain.fleet.device import Device
    ck = tmp_path / "ck.bin"
    with LocalDeployment(3, faults={1: "nan", 2: "crash@2"}, workdir=tmp_path) as d:
        res = d.run({"build": str(bp_build), "rounds": 3, "steps": 10, "eval-samples": 50, "timeout": 45.0,
                     "checkpoint": str(ck)}, timeout=400)
    hist = res["history"]
    assert [h["round"] for h in hist] == [0, 1, 2, 3]
    assert hist[1]["accepted"] == 2 and hist[2]["accepted"] == 1 and hist[3]["accepted"] >= 1
    whys = [w for _, _, w in res["rejected"]]
    assert sum("non-finite" in w for w in whys) == 3
    assert not any("other than the server" in w for w in whys)   # each device's state == the server's
    m = st.Manifest.load(bp_build / "manifest.json")
    blob, r, _ = st.load_checkpoint(ck, m)
    assert r == 3 and st.crc(blob) == hist[3]["crc"]
    dev = Device(bp_build)
    dev.restore(blob)
    assert dev.blob() == blob


def test_fleet_command_user_mistakes(tmp_path, capsys):
    from tinytrain.cli import main
    (tmp_path / "mine.txt").write_text("keep")
    for argv, what in ((["--aggregate", "bogus"], "--aggregate"), (["--faults", "99:nan"], "--faults"),
                       (["--drop", "1.5"], "--drop"), ([], "not a fleet output folder")):
        out = tmp_path if not argv else tmp_path / "new"
        assert main(["fleet", *argv, "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("tinytrain: error:") and what in err[0]
    assert (tmp_path / "mine.txt").read_text() == "keep"
