"""Benchmarks against peers, each measured as a ratio in one run on the same machine.

    python bench.py rollout   # our KV-cached sampler vs transformers.generate (tokens/s)
    python bench.py kernels   # fused Triton kernels vs eager PyTorch (time, peak memory; needs CUDA)
    python bench.py train     # our training step vs TRL's GRPOTrainer; CTWA's extra cost vs linear
"""
import argparse


def bench_rollout(args):
    raise NotImplementedError("filled in by the foundation issue")


def bench_kernels(args):
    raise NotImplementedError("filled in by the RL-core issue")


def bench_train(args):
    raise NotImplementedError("filled in by the train.py issue")


BENCHES = {"rollout": bench_rollout, "kernels": bench_kernels, "train": bench_train}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=sorted(BENCHES), help="which benchmark to run")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()
    BENCHES[args.which](args)
