"""Cross-version check of the demo's reward models: run this file under two environments that
differ only in transformers/tokenizers and compare the printed JSON lines.

    .venv/bin/python benchmarks/demo_rm_versions.py [kinds] [seeds]   # e.g. full,prefix-keep 0,1

Prints, per reward model kind and seed, the held-out accuracies and the first and last training
losses, with the package versions and a checksum of the start weights. Not a test (each RM takes
~30 s of one core on an idle machine; a second environment cannot run in CI); the numbers it
gave are recorded in docs/demo.md ("Reproducibility"). Optional: INIT=path.pt trains from those
start weights instead (how the cause was isolated).
"""

import hashlib
import json
import os
import sys
import time

import tokenizers
import torch
import transformers
import trl

from r3hf.demo import task
from r3hf.demo.reward_model import make_reward_model, pairwise_accuracy, train_reward_model
from r3hf.demo.run import DemoSettings, _rm_data


def checksum(model) -> str:
    flat = torch.cat([v.detach().flatten().float() for v in model.state_dict().values()])
    return hashlib.sha1(flat.numpy().tobytes()).hexdigest()[:10]


def main():
    torch.set_num_threads(1)
    kinds = sys.argv[1].split(",") if len(sys.argv) > 1 else ["full", "prefix-keep"]
    seeds = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else [0]
    s = DemoSettings()
    g = torch.Generator().manual_seed(0)
    ref = task.ReferencePolicy.make()
    train, test = task.preference_pairs(s.train_pairs, g, ref), task.preference_pairs(s.test_pairs, g, ref)
    versions = {m.__name__: m.__version__ for m in (torch, transformers, tokenizers, trl)}
    for kind in kinds:
        data = _rm_data(kind, s, train)
        for seed in seeds:
            t = time.perf_counter()
            model = make_reward_model(seed)
            if os.environ.get("INIT"):
                model.load_state_dict(torch.load(os.environ["INIT"]))
            start = checksum(model)
            model, log = train_reward_model(data, epochs=s.rm_epochs, seed=seed, model=model)
            acc = pairwise_accuracy(model, test)
            losses = [e["loss"] for e in log if "loss" in e]
            print(json.dumps({**versions, "kind": kind, "seed": seed, "start_weights": start,
                              "ground_truth_accuracy": round(acc["ground_truth_accuracy"], 4),
                              "label_accuracy": round(acc["label_accuracy"], 4),
                              "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
                              "trained_weights": checksum(model), "seconds": round(time.perf_counter() - t)}),
                  flush=True)


if __name__ == "__main__":
    main()
