"""The training loop: optimisation, per-epoch selection, checkpoints and resume.

Run layout (RUN_DIR):
  config.yaml        the resolved config
  run.json           what export and eval need to rebuild the towers (encoder, dims, vocab)
  last.safetensors   full training state, rewritten atomically every few hundred steps
  best.safetensors   model weights of the epoch with the best selection MRR
  metrics.jsonl      one line per finished epoch
  eval.json          final metrics of the best weights on holdout / selection / all validation
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from molret.featurize import FEATURE_VOCAB_VERSION

from . import distributed as D
from .checkpoint import load_training_state, load_weights, save_training_state, save_weights
from .config import Config, save_config
from .dataset import epoch_batches, prepare_pool
from .evaluate import PoolEmbeddings, mean_mrr
from .losses import (
    Critic,
    batch_hard_triplet,
    critic_loss,
    generator_loss,
    info_nce,
    second_order_losses,
)
from .model import DualEncoder, Encoded, PackedGraphs, freeze_lower_layers
from .text_encoder import load_text_encoder, resolve_text_encoder

log = logging.getLogger(__name__)


def text_hidden_size(config: Config) -> int:
    encoder_dir = resolve_text_encoder(config.model.text_encoder)
    return int(json.loads((encoder_dir / "config.json").read_text())["hidden_size"])


def build_model(config: Config, with_text_encoder: bool | None = None) -> DualEncoder:
    """The dual encoder; the pretrained encoder is attached when it is trained (or asked for)."""
    attach = (
        config.model.text_trainable_layers > 0 if with_text_encoder is None else with_text_encoder
    )
    encoder = load_text_encoder(config.model.text_encoder) if attach else None
    if encoder is not None:
        freeze_lower_layers(encoder, config.model.text_trainable_layers)
    return DualEncoder(config.model, text_hidden_size(config), encoder)


class Objective(nn.Module):
    """Weights the loss terms of the config; owns the learnable InfoNCE temperature."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config.loss
        self.log_temperature = nn.Parameter(torch.tensor(math.log(config.loss.infonce_temperature)))

    def forward(
        self, text: Encoded, mol: Encoded, critic: Critic | None
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        t = D.gather_with_grad(text.embedding)
        m = D.gather_with_grad(mol.embedding)
        if cfg.first_order == "triplet":
            first = batch_hard_triplet(t, m, cfg.triplet_margin)
        else:
            first = info_nce(t, m, self.log_temperature)
        terms = {"first_order": first}
        total = cfg.first_order_weight * first
        if cfg.first_order == "triplet" and cfg.infonce_weight:
            terms["infonce"] = info_nce(t, m, self.log_temperature)
            total = total + cfg.infonce_weight * terms["infonce"]
        if cfg.intra_weight or cfg.cross_weight:
            second = second_order_losses(
                t, m, cfg.second_order_mode, cfg.intra_temperature, cfg.cross_temperature
            )
            terms["intra"], terms["cross"] = second.intra, second.cross
            total = total + cfg.intra_weight * second.intra + cfg.cross_weight * second.cross
        if critic is not None:
            adv = generator_loss(critic, D.gather_with_grad(mol.pooled))
            terms["adversarial"] = adv
            total = total + cfg.adversarial_weight * adv
        terms["total"] = total
        return terms


def warmup_linear(warmup: int, total: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def make_optimizer(
    model: DualEncoder, objective: Objective, config: Config
) -> torch.optim.Optimizer:
    """AdamW with its own learning rate for the pretrained encoder; no decay on norms/biases."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    named = list(model.named_parameters()) + [
        ("objective." + n, p) for n, p in objective.named_parameters()
    ]
    for name, param in named:
        if not param.requires_grad:
            continue
        key = (name.startswith("text_encoder."), param.ndim >= 2 and "memory" not in name)
        groups.setdefault(key, []).append(param)
    cfg = config.optim
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": cfg.encoder_lr if is_encoder else cfg.lr,
                "weight_decay": cfg.weight_decay if decays else 0.0,
            }
            for (is_encoder, decays), params in sorted(groups.items())
        ]
    )


@dataclass
class Progress:
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_score: float = -1.0
    best_epoch: int = -1
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Trainer:
    def __init__(
        self,
        config: Config,
        data_dir: str | os.PathLike[str] | None,
        run_dir: Path,
        max_steps: int | None = None,
        cache_dir: Path | None = None,
        show_progress: bool = True,
    ) -> None:
        self.config = config
        self.run_dir = run_dir
        self.dist = D.init_distributed()
        torch.manual_seed(config.optim.seed)
        np.random.seed(config.optim.seed)
        if self.dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.pool = prepare_pool(config, data_dir, cache_dir)
        D.barrier()
        if not self.dist.is_main:
            self.pool = prepare_pool(config, data_dir, cache_dir)
        self.model = build_model(config)
        self.objective = Objective(config)
        if self.dist.enabled:
            D.convert_batchnorm(self.model)
            D.broadcast_parameters(self.model)
            D.broadcast_parameters(self.objective)
        self.critic = Critic(config.model.embed_dim) if config.loss.adversarial else None
        self.critic_optimizer = (
            torch.optim.Adam(self.critic.parameters(), lr=config.optim.lr) if self.critic else None
        )
        self.optimizer = make_optimizer(self.model, self.objective, config)
        batch = config.optim.batch_size
        if batch % self.dist.world_size:
            raise ValueError(
                f"batch_size {batch} must divide evenly over {self.dist.world_size} processes"
            )
        self.steps_per_epoch = len(self.pool.train) // batch
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(self.pool.train)} training pairs do not fill one batch of {batch}"
            )
        # The schedule always spans the configured epochs; --max-steps only stops early (like
        # a kill), so a stopped run resumed later follows the same learning-rate curve.
        scheduled = config.optim.epochs * self.steps_per_epoch
        self.total_steps = scheduled if max_steps is None else min(scheduled, max_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_linear(config.optim.warmup_steps, scheduled)
        )
        self.show_progress = show_progress and self.dist.is_main
        self.progress = Progress()

    # -- one step ---------------------------------------------------------------------------
    def local_positions(self, global_positions: np.ndarray) -> np.ndarray:
        """This process's contiguous share, so the gathered batch is the global batch in order."""
        share = len(global_positions) // self.dist.world_size
        return global_positions[self.dist.rank * share : (self.dist.rank + 1) * share]

    def encode_batch(self, positions: np.ndarray) -> tuple[Encoded, Encoded]:
        pool = self.pool
        graphs = PackedGraphs.from_graphs([pool.graphs[i] for i in positions])  # type: ignore[misc]
        mol = self.model.encode_molecule(graphs)
        if self.model.text_encoder is None:
            states, lengths = pool.texts.packed(positions.tolist())
            text = self.model.encode_text_packed(states, lengths)
        else:
            from molret.text import encode, load_tokenizer

            if not hasattr(self, "_tokenizer"):
                self._tokenizer = load_tokenizer(
                    resolve_text_encoder(self.config.model.text_encoder),
                    self.config.model.text_max_length,
                )
            tokens = encode(self._tokenizer, [pool.pairs[i].description for i in positions])
            text = self.model.encode_text(
                torch.from_numpy(tokens.input_ids), torch.from_numpy(tokens.attention_mask)
            )
        return text, mol

    def step(self, positions: np.ndarray) -> dict[str, float]:
        self.model.train()
        with torch.autocast("cpu", torch.bfloat16, enabled=self.config.optim.precision == "bf16"):
            text, mol = self.encode_batch(self.local_positions(positions))
        text, mol = text.float(), mol.float()  # the losses and the critic stay in float32
        if self.critic is not None and self.critic_optimizer is not None:
            c_loss = critic_loss(
                self.critic, D.gather_with_grad(text.pooled), D.gather_with_grad(mol.pooled)
            )
            self.critic_optimizer.zero_grad(set_to_none=True)
            c_loss.backward(inputs=list(self.critic.parameters()))
            D.average_gradients(self.critic)
            self.critic_optimizer.step()
        terms = self.objective(text, mol, self.critic)
        self.optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        D.average_gradients(self.model)
        D.average_gradients(self.objective)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.config.optim.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {k: float(v.detach()) for k, v in terms.items()}

    # -- checkpoints --------------------------------------------------------------------------
    def training_only_state(self) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer]]:
        """Modules and optimizers that a resume needs but an export does not."""
        modules: dict[str, nn.Module] = {"objective": self.objective}
        optimizers: dict[str, torch.optim.Optimizer] = {}
        if self.critic is not None and self.critic_optimizer is not None:
            modules["critic"] = self.critic
            optimizers["critic_optim"] = self.critic_optimizer
        return modules, optimizers

    def save_last(self) -> None:
        if self.dist.is_main:
            modules, optimizers = self.training_only_state()
            save_training_state(
                self.run_dir / "last.safetensors", self.model, self.optimizer, self.scheduler,
                self.progress.__dict__, modules, optimizers,
            )  # fmt: skip

    def try_resume(self) -> bool:
        path = self.run_dir / "last.safetensors"
        if not path.is_file():
            return False
        modules, optimizers = self.training_only_state()
        state = load_training_state(
            path, self.model, self.optimizer, self.scheduler, modules, optimizers
        )
        self.progress = Progress(**state)
        log.info(
            "resumed from %s at epoch %d step %d",
            path,
            self.progress.epoch,
            self.progress.global_step,
        )
        return True

    def write_metrics(self) -> None:
        lines = "".join(json.dumps(h) + "\n" for h in self.progress.history)
        tmp = self.run_dir / "metrics.jsonl.tmp"
        tmp.write_text(lines)
        os.replace(tmp, self.run_dir / "metrics.jsonl")

    def write_run_info(self) -> None:
        info = {
            "name": self.config.name,
            "text_encoder": str(resolve_text_encoder(self.config.model.text_encoder)),
            "text_hidden": text_hidden_size(self.config),
            "embed_dim": self.config.model.embed_dim,
            "text_max_length": self.config.model.text_max_length,
            "feature_vocab_version": FEATURE_VOCAB_VERSION,
            "world_size": self.dist.world_size,
        }
        (self.run_dir / "run.json").write_text(json.dumps(info, indent=2))
        save_config(self.config, self.run_dir / "config.yaml")

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate_selection(self) -> dict[str, Any]:
        subset = self.pool.validation if self.config.data.selection_pool == "validation" else None
        embeddings = PoolEmbeddings(self.model, self.pool, self.config.data.eval_batch_size, subset)
        return embeddings.evaluate(self.pool.select)

    def final_evaluation(self) -> dict[str, Any]:
        if (self.run_dir / "best.safetensors").is_file():
            load_weights(self.model, self.run_dir / "best.safetensors")
        started = time.perf_counter()
        embeddings = PoolEmbeddings(self.model, self.pool, self.config.data.eval_batch_size)
        result = {
            "protocol": "each query ranked against every molecule (or text) of train + validation",
            "holdout": embeddings.evaluate(self.pool.holdout),
            "select": embeddings.evaluate(self.pool.select),
            "validation": embeddings.evaluate(self.pool.validation),
            "best_epoch": self.progress.best_epoch,
            "global_steps": self.progress.global_step,
            "train_seconds": round(self.progress.train_seconds, 1),
            "eval_seconds": round(time.perf_counter() - started, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        (self.run_dir / "eval.json").write_text(json.dumps(result, indent=2))
        return result

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        if self.dist.is_main:
            self.write_run_info()
        self.try_resume()
        cfg = self.config.optim
        batch = cfg.batch_size
        bar = tqdm(
            total=self.total_steps, initial=self.progress.global_step, desc="train", unit="step",
            disable=not self.show_progress, dynamic_ncols=True,
        )  # fmt: skip
        losses: list[float] = []
        while self.progress.global_step < self.total_steps:
            batches = epoch_batches(len(self.pool.train), batch, cfg.seed, self.progress.epoch)
            epoch_started = time.perf_counter()
            while (
                self.progress.step_in_epoch < self.steps_per_epoch
                and self.progress.global_step < self.total_steps
            ):
                s = self.progress.step_in_epoch
                positions = self.pool.train[batches[s]]
                t0 = time.perf_counter()
                terms = self.step(positions)
                self.progress.train_seconds += time.perf_counter() - t0
                losses.append(terms["total"])
                self.progress.step_in_epoch += 1
                self.progress.global_step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{terms['total']:.4f}", epoch=self.progress.epoch)
                if self.progress.global_step % cfg.checkpoint_every_steps == 0:
                    self.save_last()
            if self.progress.step_in_epoch >= self.steps_per_epoch:
                self.end_epoch(losses, time.perf_counter() - epoch_started)
                losses = []
            else:  # stopped inside an epoch: keep the position so a rerun resumes there
                self.save_last()
        bar.close()
        D.barrier()
        result: dict[str, Any] = {}
        if self.dist.is_main:
            result = self.final_evaluation()
        D.barrier()
        return result

    def end_epoch(self, losses: list[float], seconds: float) -> None:
        if self.dist.is_main:
            selection = self.evaluate_selection()
            score = mean_mrr(selection)
            record = {
                "epoch": self.progress.epoch,
                "global_step": self.progress.global_step,
                "train_loss": float(np.mean(losses)) if losses else None,
                "lr": self.scheduler.get_last_lr()[-1],
                "select": selection,
                "select_mean_mrr": score,
                "epoch_seconds": round(seconds, 1),
            }
            self.progress.history.append(record)
            if score > self.progress.best_score:
                self.progress.best_score = score
                self.progress.best_epoch = self.progress.epoch
                save_weights(self.model, self.run_dir / "best.safetensors")
            log.info("epoch %d: selection mean MRR %.4f", self.progress.epoch, score)
        self.progress.epoch += 1
        self.progress.step_in_epoch = 0
        self.save_last()
        if self.dist.is_main:
            self.write_metrics()


def train(
    config: Config,
    data_dir: str | os.PathLike[str] | None,
    run_dir: Path,
    max_steps: int | None = None,
    cache_dir: Path | None = None,
    show_progress: bool = True,
    threads: int | None = None,
) -> dict[str, Any]:
    if threads is not None:
        torch.set_num_threads(threads)
    trainer = Trainer(config, data_dir, run_dir, max_steps, cache_dir, show_progress)
    try:
        return trainer.run()
    finally:
        D.cleanup()
