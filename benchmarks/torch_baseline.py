"""fp32 fine-tuning in PyTorch of a tinytrain float IR (BatchNorm folded), with
the same sparse-update scheme as the int8 trainer: the same layers, the same
input-channel fractions, plain SGD at batch 1.  A benchmark baseline only."""
import numpy as np
import torch
import torch.nn.functional as F

from tinytrain.compiler.reference import to_ir_layout


class IRModule(torch.nn.Module):
    def __init__(self, graph, scheme):
        super().__init__()
        self.g = graph
        self.params = torch.nn.ParameterDict()
        self.masks = {}
        for n in graph.nodes:
            if n.op not in ("conv2d", "fully_connected"):
                continue
            w = torch.tensor(graph.t(n.inputs[1]).data.copy())
            b = torch.tensor(graph.t(n.inputs[2]).data.copy())
            self.params[f"w{n.id}"] = torch.nn.Parameter(w, requires_grad=n.id in scheme.weights)
            self.params[f"b{n.id}"] = torch.nn.Parameter(b, requires_grad=n.id in scheme.biases)
            if n.id in scheme.weights and scheme.weights[n.id] < 1.0:
                m = torch.zeros_like(w)
                r = scheme.weights[n.id]
                if n.op == "conv2d" and n.attrs["groups"] > 1 and w.shape[3] == 1:
                    m[: int(np.ceil(w.shape[0] * r))] = 1
                else:
                    m[..., : int(np.ceil(w.shape[-1] * r))] = 1
                self.params[f"w{n.id}"].register_hook(lambda gr, m=m: gr * m)

    def forward(self, x):
        g = self.g
        env = {g.inputs[0]: x}
        for n in g.nodes:
            ins = [env.get(i) for i in n.inputs]
            a = n.attrs
            if n.op == "conv2d":
                w = self.params[f"w{n.id}"].permute(0, 3, 1, 2)
                pt, pl, pb, pr = a["pads"]
                xx = F.pad(ins[0].permute(0, 3, 1, 2), (pl, pr, pt, pb))
                y = F.conv2d(xx, w, self.params[f"b{n.id}"], stride=a["stride"], dilation=a["dilation"],
                             groups=a["groups"]).permute(0, 2, 3, 1)
            elif n.op == "fully_connected":
                y = ins[0] @ self.params[f"w{n.id}"].T + self.params[f"b{n.id}"]
            elif n.op == "add":
                y = ins[0] + ins[1]
            elif n.op == "mul":
                y = ins[0] * ins[1]
            elif n.op == "global_avg_pool":
                y = ins[0].mean(dim=(1, 2), keepdim=True)
            elif n.op == "reshape":
                y = ins[0].reshape((ins[0].shape[0],) + tuple(a["shape"][1:]))
            elif n.op == "transpose":
                y = ins[0].permute(*a["perm"])
            elif n.op == "clamp":
                y = ins[0]
            else:
                raise NotImplementedError(n.op)
            act = a.get("act")
            if act is not None:
                y = torch.clamp(y, act[0], act[1])
            env[n.outputs[0]] = y
        return env[g.outputs[0]]


def finetune(graph, scheme, x, y, tx, ty, lr, epochs, seed):
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    model = IRModule(graph, scheme)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    xs = torch.tensor(to_ir_layout(graph, x))
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        for i in rng.permutation(len(x)):
            opt.zero_grad()
            loss = F.cross_entropy(model(xs[i:i + 1]), torch.tensor([int(y[i])]))
            loss.backward()
            opt.step()
    with torch.no_grad():
        pred = torch.cat([model(torch.tensor(to_ir_layout(graph, tx[s:s + 256]))) for s in range(0, len(tx), 256)])
    return float((pred.argmax(1).numpy() == ty).mean())


class NCHWModule(torch.nn.Module):
    """The same network and trained tensors as IRModule at PyTorch's best layout: plain NCHW
    eager, weights permuted once here (not per call), symmetric pads given to the conv itself
    (F.pad only where a pad is asymmetric), no copy around any conv. Takes the ONNX (NCHW) input."""

    def __init__(self, graph, scheme):
        super().__init__()
        self.g = graph
        self.params = torch.nn.ParameterDict()
        for n in graph.nodes:
            if n.op not in ("conv2d", "fully_connected"):
                continue
            w = torch.tensor(graph.t(n.inputs[1]).data.copy())
            if n.op == "conv2d":
                w = w.permute(0, 3, 1, 2).contiguous()          # (O, KH, KW, I/g) -> (O, I/g, KH, KW)
            b = torch.tensor(graph.t(n.inputs[2]).data.copy())
            self.params[f"w{n.id}"] = torch.nn.Parameter(w, requires_grad=n.id in scheme.weights)
            self.params[f"b{n.id}"] = torch.nn.Parameter(b, requires_grad=n.id in scheme.biases)
            if n.id in scheme.weights and scheme.weights[n.id] < 1.0:     # the same partial updates
                m = torch.zeros_like(w)
                r = scheme.weights[n.id]
                if n.op == "conv2d" and n.attrs["groups"] > 1 and w.shape[1] == 1:
                    m[: int(np.ceil(w.shape[0] * r))] = 1
                elif n.op == "conv2d":
                    m[:, : int(np.ceil(w.shape[1] * r))] = 1
                else:
                    m[..., : int(np.ceil(w.shape[-1] * r))] = 1
                self.params[f"w{n.id}"].register_hook(lambda gr, m=m: gr * m)

    def forward(self, x):
        g = self.g
        env = {g.inputs[0]: x}
        for n in g.nodes:
            ins = [env.get(i) for i in n.inputs]
            a = n.attrs
            if n.op == "conv2d":
                pt, pl, pb, pr = a["pads"]
                xx, pad = (ins[0], (pt, pl)) if (pt, pl) == (pb, pr) else (F.pad(ins[0], (pl, pr, pt, pb)), 0)
                y = F.conv2d(xx, self.params[f"w{n.id}"], self.params[f"b{n.id}"], stride=a["stride"],
                             padding=pad, dilation=a["dilation"], groups=a["groups"])
            elif n.op == "fully_connected":
                y = F.linear(ins[0], self.params[f"w{n.id}"], self.params[f"b{n.id}"])
            elif n.op == "add":
                y = ins[0] + ins[1]
            elif n.op == "global_avg_pool":
                y = ins[0].mean(dim=(2, 3), keepdim=True)
            elif n.op == "reshape":
                z = ins[0]
                if z.dim() == 4 and z.shape[2] * z.shape[3] > 1:
                    z = z.permute(0, 2, 3, 1)                     # the IR flattens NHWC
                y = z.reshape((z.shape[0],) + tuple(a["shape"][1:]))
            elif n.op == "clamp":
                y = ins[0]
            else:
                raise NotImplementedError(n.op)
            act = a.get("act")
            if act is not None:
                y = torch.clamp(y, act[0], act[1])
            env[n.outputs[0]] = y
        return env[g.outputs[0]]
