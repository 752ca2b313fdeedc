"""``minireptile demo``: draw characters in a browser and watch the meta-learned model learn them.

Serves one local page (127.0.0.1, port 8000 or the next free one): draw one example of each
of N new classes (K with --shots K) and one more character, press "learn", and see the
checkpoint's initialisation fine-tuned on the drawings next to a network learning from
scratch, step by step. Without --checkpoint, the 3-way Omniglot checkpoint shipped in the
package (assets/demo-omniglot-3way, its command and accuracy in the README there).

Its second page, /explore, shows Reptile, FOMAML, exact MAML and iMAML updating theta on a
plane of two-parameter tasks. Both pages' apps share one lock: one request's CPU work at a time.
"""
import json
import os
import threading
import webbrowser

from .. import backend
from ..config import build_model, inner_optimizer
from ..demo.learner import Learner
from ..demo.drawing import DrawingApp
from ..demo.explore import ExploreApp
from ..demo.server import HOST, make_server
from ..errors import UserError
from ..evaluate import load_trained
from . import add_device_flags

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets",
                       "demo-omniglot-3way")


def register(sub):
    p = sub.add_parser("demo", help="draw characters in a browser and watch the model learn",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("--checkpoint", metavar="DIR", default=None,
                   help="an Omniglot training folder (default: the shipped 3-way checkpoint)")
    p.add_argument("--classes", type=int, default=None, metavar="N",
                   help="N-way: classes to draw (default and only choice: the checkpoint's)")
    p.add_argument("--shots", type=int, default=1, metavar="K",
                   help="K-shot: drawings per class (default 1)")
    p.add_argument("--eval-iters", type=int, default=None, metavar="STEPS",
                   help="fine-tuning steps (default: the checkpoint's --eval-iters)")
    p.add_argument("--port", type=int, default=None, metavar="P",
                   help="port on 127.0.0.1 (default 8000, or the next free one)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    add_device_flags(p, dtype=False)
    p.set_defaults(func=run_demo)


def load_learner(folder, classes, shots, eval_iters, seed):
    """(Learner, N, description) from a checkpoint folder, after checking the flags fit it."""
    cfg, theta, optimizer, _ = load_trained(folder)
    if cfg.dataset != "omniglot":
        raise UserError(f"{folder}: a {cfg.dataset} checkpoint; the demo draws Omniglot-like "
                        f"characters and needs an Omniglot one")
    if classes is not None and classes != cfg.classes:
        raise UserError(f"--classes {classes}: {folder} was trained for {cfg.classes}-way "
                        f"tasks (its last layer has {cfg.classes} outputs); train a "
                        f"{classes}-way one with: minireptile train omniglot --classes "
                        f"{classes} --defaults quick --checkpoint DIR")
    if not 1 <= shots <= 10:
        raise UserError(f"--shots {shots}: draw between 1 and 10 examples per class")
    if eval_iters is not None:
        if not 1 <= eval_iters <= 1000:
            raise UserError(f"--eval-iters {eval_iters}: take between 1 and 1000 steps")
        cfg.eval_iters = eval_iters
    model = build_model(cfg)
    if theta.shape != (model.num_params,):
        raise UserError(f"{folder}: theta has {theta.shape[-1]} parameters, the omniglot "
                        f"model {model.num_params}")
    learner = Learner(model, theta, optimizer, inner_optimizer(cfg, model), cfg, seed)
    return learner, cfg.classes, _describe(folder, cfg)


def _describe(folder, cfg):
    """One line for the page: the algorithm, the tasks, and the accuracy train measured."""
    text = (f"{cfg.algo}, Omniglot {cfg.classes}-way, {cfg.meta_iters} meta-iterations, "
            f"fine-tuned {cfg.eval_iters} steps")
    try:
        with open(os.path.join(folder, "results.json")) as f:
            test = json.load(f)["test"]
        text += (f"; held-out accuracy {100 * test['accuracy']:.1f}% +/- "
                 f"{100 * test['ci95']:.1f}% ({cfg.shots}-shot)")
    except (OSError, ValueError, KeyError, TypeError):
        pass                                  # a folder without train's results.json
    return text


def run_demo(args):
    backend.set_backend(args.device)
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: a port is a number from 0 to 65535")
    folder = args.checkpoint or SHIPPED
    learner, classes, model = load_learner(folder, args.classes, args.shots, args.eval_iters,
                                           args.seed)
    lock = threading.Lock()                   # the CPU work of both pages, one at a time
    server = make_server([DrawingApp(learner, classes, args.shots, model, lock),
                          ExploreApp(lock)], args.port)
    url = f"http://{HOST}:{server.server_address[1]}/"
    print(f"minireptile demo: {classes}-way {args.shots}-shot, {model}\n"
          f"checkpoint {folder}\nserving {url} (Ctrl-C to stop); the meta-updates on a "
          f"plane: {url}explore", flush=True)
    if args.open:
        webbrowser.open(url)
    with server:
        server.serve_forever()
