"""One process or many, and in which precision: the one file that knows about either.

    python sft.py …                                        # one process: the CPU or one GPU
    torchrun --nproc-per-node 4 sft.py …                   # 4 GPUs of one machine
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29500 grpo.py …               # 2 machines (run the same line on each)

Under torchrun every process holds a shard of the weights, gradients and optimizer state (FSDP2:
`fully_shard` per vision block and per decoder layer, then the root), NCCL on CUDA and gloo on CPU.
Batch sizes stay global: each process takes its share of every batch, and the losses are written
so that the summed gradient is the one a single process would get on the whole batch.

--precision
    fp32        weights, gradients, AdamW state and compute in fp32 (default on CPU)
    bf16-mixed  fp32 master weights and AdamW state, compute in bf16, gradients reduced in fp32
                (default on CUDA): small updates survive, as in fp32
    bf16        everything in bf16: half the memory for weights, gradients and AdamW state, but an
                update below bf16's resolution (~0.4% of the weight) is rounded away: at lr 1e-6
                most weights never move
The training scripts build a `Runtime` once (setup) and never ask which case they are in. It does
three jobs, a class each: Placement (device, precision, sharding, gathering for generation),
Collectives (sums, gathers, batch shares; map_generation runs work over the shares and returns
everything to everyone), TrainingState (the weights, optimizer and random states a checkpoint holds).
"""

import argparse
import math
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

PRECISIONS = ("fp32", "bf16-mixed", "bf16")


def add_runtime_args(parser):
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="fp32 (CPU default) | bf16-mixed: fp32 master weights and optimizer, bf16 "
                             "compute (CUDA default) | bf16: all bf16, least memory, but updates below "
                             "~0.4%% of a weight are lost (small learning rates train almost nothing)")
    parser.add_argument("--gather-for-generation", action=argparse.BooleanOptionalAction, default=True,
                        help="under torchrun, gather the whole model on every process once per rollout or "
                             "evaluation (fast: no collective per token). --no-gather-for-generation keeps "
                             "the weights sharded while sampling: each layer is gathered per token, the "
                             "processes step in lockstep, and a process holds its shard, the root unit "
                             "(embeddings, final norm, vision merger) and the layer running (least memory, "
                             "slower; TRL's ds3_gather_for_generation=False)")


@dataclass
class Processes:
    """Which process this is, of how many, on which device, in which precision: the fields the three
    jobs of a Runtime (Placement, Collectives, TrainingState) share."""
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    precision: str = "fp32"
    gather_for_generation: bool = True

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def sharded(self):
        return self.world_size > 1


class Placement(Processes):
    """Where the weights live and in which dtype: a model put on this process's device in the
    run's precision, sharded under torchrun (prepare), and gathered whole while it samples
    (generation)."""

    @property
    def weight_dtype(self):
        """dtype the trained weights are stored in (the master weights)."""
        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    @property
    def frozen_dtype(self):
        """dtype of a model that is never trained (GRPO's reference): bf16 unless fp32 is asked."""
        return torch.float32 if self.precision == "fp32" else torch.bfloat16

    @property
    def reads_weights(self):
        """Whether this process reads the weights from disk: under torchrun only rank 0 does; the
        others build the model on the meta device and get rank 0's weights in prepare()."""
        return self.is_main

    def prepare(self, model, frozen=False):
        """Put `model` on this process's device in this run's precision; shard it under torchrun.

        One process, bf16-mixed: the weights stay fp32 and the forward runs under bf16 autocast.
        Several processes: FSDP2 with a MixedPrecisionPolicy (bf16 compute, fp32 reduction), and
        the weights of rank 0 (the only process that read them) broadcast into every shard.
        A model marked `frozen_base` (lora.py's adapters on a frozen model) trains only some of its
        weights: the frozen rest is stored as a frozen model is (bf16 under bf16-mixed), the
        trained weights and their AdamW state as trained weights (fp32).
        """
        dtype = self.frozen_dtype if frozen else self.weight_dtype
        model.to(dtype=dtype)               # also on the meta device: shapes and dtypes only
        if getattr(model, "frozen_base", False):
            for param in model.parameters():
                if not param.requires_grad:
                    param.data = param.data.to(self.frozen_dtype)
        mixed = self.precision == "bf16-mixed" and not frozen
        if not self.sharded:
            model.to(self.device)
            if mixed:   # the forward and the vision tower, which policy.ImageFeatures calls apart from it
                for method in ("forward", "get_image_features"):
                    setattr(model, method, torch.autocast(self.device.type, dtype=torch.bfloat16)(getattr(model, method)))
            return model
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
        full = model.state_dict() if self.is_main else {}    # rank 0's weights, to broadcast once sharded
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if mixed else None, reduce_dtype=torch.float32)
        mesh = dist.device_mesh.init_device_mesh(self.device.type, (self.world_size,))
        units = [*model.model.visual.blocks, *model.model.language_model.layers, model]
        for unit in units:
            fully_shard(unit, mesh=mesh, mp_policy=policy)
        for unit in units:
            # Gradients are summed over processes, not averaged: each process's loss is already
            # its share of the global batch's loss (the loops divide by global counts). A plain
            # sum also is the one reduction gloo has.
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
        self._broadcast_weights(model, full)
        # policy.ImageFeatures runs the vision tower apart from the forward: gather the root's weights
        # (patch embedding, merger) for it as for a forward
        register_fsdp_forward_method(model, "get_image_features")
        # The root (embeddings, lm_head, final norm, the vision merger) keeps its weights gathered
        # from forward to backward, FSDP2's default for the root: completion_logprobs applies
        # lm_head after the forward returns.
        model.set_reshard_after_forward(False, recurse=False)
        return model

    def _broadcast_weights(self, model, full):
        """Fill every process's shards with rank 0's weights (`full`, its state dict; {} elsewhere).

        A model built on the meta device gets memory first (to_empty); the broadcast then writes every shard
        (set_model_state_dict, as verl and accelerate do). Buffers are not sharded and the rotary
        inv_freq ones are not in the state dict: each is broadcast whole. Tied embeddings stay one
        parameter through fully_shard and to_empty (checked in test_distributed.py).
        """
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        if any(p.is_meta for p in model.parameters()):
            model.to_empty(device=self.device)
        set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    @contextmanager
    def generation(self, model):
        """Sampling from `model` for a while (a whole rollout or evaluation); yields `all_done`, the
        stop test of policy.sample_completions (None: each process stops on its own).

        Sampling runs one forward per token, and their number differs between processes (each
        stops when its own completions end). By default (--gather-for-generation) every shard is
        gathered up front: no collective runs inside, the weights travel once per rollout instead
        of once per token, and each process stops on its own. With --no-gather-for-generation the
        weights stay sharded, every forward gathers its units one by one (a process holds its
        shard, the root unit, which stays gathered, and the layer running), and the processes step
        in lockstep: all_done(done) is True only when every process is done, and a process that is
        done keeps running forwards, drawing nothing, until then. The callers give every process
        the same number of batches (Collectives.map_generation).
        """
        if not self.sharded:
            yield None
            return
        if not self.gather_for_generation:
            yield self.all_true
            return
        from torch.distributed.fsdp import FSDPModule
        units = [m for m in model.modules() if isinstance(m, FSDPModule)]
        model.set_reshard_after_forward(False)                # every unit
        for unit in units:
            unit.unshard()
        try:
            yield None
        finally:
            model.set_reshard_after_forward(True)
            model.set_reshard_after_forward(False, recurse=False)   # the root's own setting: see prepare
            for unit in units:
                unit.reshard()


class Collectives(Processes):
    """What the processes compute together: sums and gathers of python values, each process's
    share of a global batch, generation mapped over shares (map_generation), the global gradient
    norm, and printing once."""

    def sum(self, value):
        """Sum of a python number over processes (itself when there is one)."""
        if not self.sharded:
            return value
        t = torch.tensor(float(value), dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return t.item()

    def all_true(self, flag):
        """Whether `flag` holds on every process (itself when there is one)."""
        return self.sum(0.0 if flag else 1.0) == 0

    def gather(self, obj):
        """[obj of rank 0, obj of rank 1, …] on every process (any picklable object)."""
        if not self.sharded:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_scores(self, values):
        """The 1-D arrays of every process, concatenated in rank order (the adaptive buffer's feed)."""
        return np.concatenate([np.asarray(v, dtype=float) for v in self.gather(list(map(float, values)))])

    def share(self, items):
        """This process's contiguous share of a global batch; the shares in rank order rebuild it."""
        n = len(items)
        if n % self.world_size:
            raise ValueError(f"a batch of {n} does not split over {self.world_size} processes; "
                             f"use a multiple of {self.world_size}")
        per = n // self.world_size
        return items[self.rank * per:(self.rank + 1) * per]

    def every_nth(self, n):
        """(indices, own): this process's share of range(n), every world_size-th index from its
        rank, padded to ceil(n / world_size) indices with repeats of its first (of 0 when it has
        none), so that every process runs as many batches: generation with sharded weights steps
        in lockstep (Placement.generation). Only the first `own` are its share. (The padding also
        runs with gathered weights: one record at most.)"""
        mine = list(range(self.rank, n, self.world_size))
        padding = [mine[0] if mine else 0] * (math.ceil(n / self.world_size) - len(mine))
        return mine + padding, len(mine)

    def map_generation(self, model, fn, items, batch_size, progress=None):
        """[fn's result for each of `items`], in item order, on every process, with the work shared:
        each process calls fn(batch, all_done) -> one result per item of the batch, on batches of
        its share of `items` (every_nth), inside generation(model) (all_done: sample_completions'
        stop test). The repeats that pad a share run but their results are dropped here.
        progress: a tqdm bar of that name on the main process."""
        from tqdm import tqdm
        mine, own = self.every_nth(len(items))
        results = {}
        with self.generation(model) as all_done:
            for start in tqdm(range(0, len(mine), batch_size), desc=progress, file=sys.stderr,
                              disable=progress is None or not self.is_main):
                chunk = mine[start:start + batch_size]
                for j, result in zip(chunk[:max(own - start, 0)], fn([items[j] for j in chunk], all_done)):
                    results[j] = result
        everyone = {j: result for part in self.gather(results) for j, result in part.items()}
        return [everyone[j] for j in range(len(items))]

    def clip_grad_norm(self, params, max_norm):
        """Clip the gradient to a global norm of max_norm (over every process's shard); the norm
        before clipping, a python float (inf or nan when a gradient is not finite)."""
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def print(self, *args, **kwargs):
        """print on the main process only."""
        if self.is_main:
            print(*args, **kwargs, flush=True)

    def require_divisible(self, n, option, script):
        """Exit with one line when a global batch of n cannot be shared evenly."""
        if n % self.world_size:
            raise SystemExit(f"{script}: {option} {n} does not split over {self.world_size} processes; "
                             f"use a multiple of {self.world_size}")

    def barrier(self):
        if self.sharded:
            dist.barrier()

    @property
    def _comm_device(self):
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self):
        if self.sharded and dist.is_initialized():
            dist.barrier()            # every process done with its collectives before teardown
            dist.destroy_process_group()


class TrainingState(Processes):
    """What a checkpoint holds of a sharded run, gathered whole on the main process and handed back
    to every shard on resume: the model's weights, the optimizer's state, every process's random
    state (gathered with Collectives.gather)."""

    def model_state(self, model, trainable_only=False):
        """The full (unsharded) state dict on the main process, None elsewhere; None with one
        process (save_pretrained then reads the model itself). trainable_only (LoRA): only the
        parameters that train, every process's shard of each gathered (the frozen base is not
        saved, so it is not gathered either)."""
        if not self.sharded:
            return None
        if trainable_only:   # full_tensor() is a collective: every process gathers every adapter, in one order
            state = {name: (param.full_tensor() if hasattr(param, "full_tensor") else param).detach().cpu()
                     for name, param in model.named_parameters() if param.requires_grad}
            return state if self.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if model.config.get_text_config().tie_word_embeddings:
            state.pop("lm_head.weight", None)   # the embedding matrix, saved once (as one process does)
        return state if self.is_main else None

    def optimizer_state(self, model, optimizer):
        """The optimizer's full state (fp32 moments) to save; all processes must call this."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, model, optimizer, state):
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))

    def rng_state(self):
        """Every process's random state (CPU, and CUDA where used), for an exact resume."""
        own = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            own["cuda"] = torch.cuda.get_rng_state(self.device)
        return self.gather(own)

    def set_rng_state(self, states):
        if len(states) != self.world_size:
            raise SystemExit(f"this checkpoint was written by {len(states)} process(es); resume it with "
                             f"the same number (torchrun --nproc-per-node {len(states)}), not "
                             f"{self.world_size}")
        own = states[self.rank]
        torch.set_rng_state(own["cpu"])
        if "cuda" in own and self.device.type == "cuda":
            torch.cuda.set_rng_state(own["cuda"], self.device)


@dataclass
class Runtime(Placement, Collectives, TrainingState):
    """This process's runtime: its three jobs (Placement, Collectives, TrainingState) on one set of
    fields. The training scripts build one with setup() and never ask which case they are in."""


def setup(precision=None, device=None, gather_for_generation=True):
    """The Runtime of this process: torchrun's environment if launched by it, else one process.

    Under torchrun (WORLD_SIZE > 1) the process group starts here: NCCL with one GPU per process
    on CUDA, gloo on CPU. precision None picks bf16-mixed on CUDA and fp32 elsewhere.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if world_size > 1 else (device.index or 0))
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device
                                if device.type == "cuda" else None)
    if device.type == "cpu":
        # On several CPU threads some torch kernel (used by GRPO's update, not by SFT) sums in an order
        # that varies from run to run: two runs from one start differed at the 9th digit from step 2.
        # Its deterministic variant makes a CPU run bit-reproducible for a given thread count
        # (EXPERIMENTS.md §1), at no measurable cost. Not on CUDA, where it costs speed and needs
        # CUBLAS_WORKSPACE_CONFIG.
        torch.use_deterministic_algorithms(True)
    precision = precision or ("bf16-mixed" if device.type == "cuda" else "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return Runtime(rank=rank, world_size=world_size, device=device, precision=precision,
                   gather_for_generation=gather_for_generation)
