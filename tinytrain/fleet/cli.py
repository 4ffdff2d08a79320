"""`tinytrain fleet`: a federation of devices on the shipped model and data, in this process
(Flower Messages to the ClientApp, the default) or on a local Flower Deployment Runtime
(`--deployment`: a SuperLink and one SuperNode per client, as separate processes)."""
import json
from pathlib import Path

from ..compiler.errors import TinytrainError

FAULTS = ("nan", "signature", "size", "range", "crash", "poison")


def _faults(text, clients):
    """'3:nan,5:signature' -> {3: 'nan', 5: 'signature'}"""
    out = {}
    for part in filter(None, (text or "").split(",")):
        k, _, v = part.partition(":")
        ok = v in FAULTS or (v.startswith("crash@") and v[6:].isdigit())
        if not k.strip().isdigit() or not ok or not 0 <= int(k) < clients:
            raise TinytrainError(f"--faults '{part}': expected <client 0..{clients - 1}>:<{'|'.join(FAULTS)}>")
        out[int(k)] = v
    return out


def cmd_fleet(args):
    from .app import InProcessGrid, Server, client_app
    from .device import prepare
    if client_app is None:
        raise TinytrainError("the fleet needs Flower: pip install 'tinytrain[fleet]'")
    out = Path(args.output)
    marker = out / "fleet.json"
    if out.exists() and any(out.iterdir()) and not marker.exists():
        raise TinytrainError("exists and is not a fleet output folder: choose another -o", file=out)
    faults = _faults(args.faults, args.clients)
    if not 0.0 <= args.drop < 1.0:
        raise TinytrainError(f"--drop {args.drop}: expected a fraction in [0, 1)")
    if args.deployment and args.drop:
        raise TinytrainError("--drop simulates drop-outs in process; with --deployment kill a SuperNode instead")
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("model", "calib", "data", "test", "update", "trainer", "clients",
                                              "alpha", "seed", "lr", "max_train")}
    old = json.loads(marker.read_text()).get("settings") if marker.exists() else None
    ckpt = out / "checkpoint.bin"
    if old != settings:
        if ckpt.exists():
            ckpt.unlink()               # another federation: its checkpoint does not apply
        m = prepare(out / "build", args.model, args.calib, args.data, args.test, update=args.update,
                    clients=args.clients, alpha=args.alpha, seed=args.seed, lr=args.lr, max_train=args.max_train,
                    trainer=args.trainer)
        marker.write_text(json.dumps({"settings": settings}, indent=1))
    else:
        from .state import Manifest
        m = Manifest.load(out / "build" / "manifest.json")
    print(f"fleet: {args.clients} clients, Dirichlet alpha {args.alpha}, {args.trainer} on '{args.update}' "
          f"({len(m.tensors)} tensors, {m.update_bytes()} B of trained parameters, state {m.state_size} B), "
          f"{'Deployment Runtime' if args.deployment else 'in process'}")
    common = dict(rounds=args.rounds, steps=args.steps, aggregate=args.aggregate, clip=args.clip, k=args.k,
                  seed=args.seed)
    if args.deployment:
        from .deploy import LocalDeployment
        cfg = {"build": str((out / "build").resolve()), "checkpoint": str(ckpt.resolve()),
               "eval-samples": args.eval_samples, "timeout": float(args.timeout), **common}
        with LocalDeployment(args.clients, faults=faults, workdir=out) as d:     # its logs stay in -o
            res = d.run(cfg, timeout=args.timeout * (args.rounds + 2) + 120)
        history, rejected = res["history"], res["rejected"]
        for r, node, why in rejected:
            print(f"round {r}: rejected node {node}: {why}")
        for h in history:
            print(f"round {h['round']}: accuracy {100 * h['accuracy']:.2f}%" +
                  (f", {h['accepted']}/{h['sent']} updates, {h['up_bytes']} B up / {h['down_bytes']} B down "
                   f"per client" if h["round"] else ""))
    else:
        srv = Server(out / "build", rounds=args.rounds, steps=args.steps, rule=args.aggregate, clip=args.clip,
                     k=args.k, seed=args.seed, checkpoint=ckpt, eval_samples=args.eval_samples)
        srv.run(InProcessGrid(out / "build", args.clients, run_config={"seed": args.seed}, faults=faults,
                              drop=args.drop, seed=args.seed))
        history, rejected = srv.history, srv.rejected
    (out / "fleet_report.json").write_text(json.dumps({"settings": settings, **common, "history": history,
                                                       "rejected": rejected}, indent=1, default=str))
    print(f"report: {out / 'fleet_report.json'}; global state: {ckpt}")
    return 0


def add_fleet_command(sub):
    s = sub.add_parser("fleet", help="federated training over a fleet of devices (Flower)",
                       description="Federated on-device training through Flower: each client trains the compiled "
                                   "C library on its own Dirichlet partition and sends only its trained int8/int32 "
                                   "tensors (or, --trainer mezo, seed indices and scalars).")
    s.add_argument("--model", default="models/mcu_cnn_mnist.onnx")
    s.add_argument("--calib", default="models/data/mnist_calib.npz")
    s.add_argument("--data", default="models/data/fmnist_train.npz")
    s.add_argument("--test", default="models/data/fmnist_test.npz")
    s.add_argument("--update", default="classifier", help="the trained tensors (a --update scheme of train)")
    s.add_argument("--trainer", choices=["backprop", "mezo"], default="backprop",
                   help="mezo: zeroth-order, the update is (seed index, scalar) pairs (FedKSeed)")
    s.add_argument("--clients", type=int, default=8)
    s.add_argument("--alpha", type=float, default=0.5, help="Dirichlet label skew (0.1 strong, 10 mild)")
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--steps", type=int, default=40, help="local training steps a round")
    s.add_argument("--lr", type=float, default=None, help="default 0.05 (backprop), 1e-4 (mezo)")
    s.add_argument("--aggregate", default="fedavg", help="fedavg, median or trim:<k>")
    s.add_argument("--clip", type=float, default=0.0,
                   help="clip each client's per-tensor update norm to this multiple of the round's median")
    s.add_argument("--k", type=int, default=64, help="candidate seeds a round (mezo)")
    s.add_argument("--drop", type=float, default=0.0, help="fraction of clients that drop out each round")
    s.add_argument("--faults", default="", help="faulty clients, e.g. '3:nan,5:signature' (nan, signature, "
                                                 "size, range, crash, crash@<round>, poison: well-formed but reversed x10)")
    s.add_argument("--max-train", type=int, default=None)
    s.add_argument("--eval-samples", type=int, default=500)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--timeout", type=float, default=120.0, help="seconds a round waits for replies (--deployment)")
    s.add_argument("--deployment", action="store_true",
                   help="a local Flower Deployment Runtime: SuperLink + one SuperNode per client on 127.0.0.1")
    s.add_argument("-o", "--output", default="fleet_out")
    s.set_defaults(func=_run)
    return s


def _run(args):
    if args.lr is None:
        args.lr = 1e-4 if args.trainer == "mezo" else 0.05
    if not 1 <= args.clients <= 1000 or args.rounds < 1 or args.steps < 1 or not 1 <= args.k <= 65535:
        raise TinytrainError("--clients 1..1000, --rounds >= 1, --steps >= 1, --k 1..65535")
    from ..compiler.hparams import check_lr
    check_lr(args.lr)
    from .state import check_rule
    check_rule(args.aggregate)
    return cmd_fleet(args)
