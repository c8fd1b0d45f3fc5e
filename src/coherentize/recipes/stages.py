"""The stage cache of an experiment: every stage writes into ``<out_dir>/stages/<stage>-<hash>/`` and marks itself
done with ``done.json`` written last. The hash covers the stage's own config (less cosmetic settings:
COSMETIC_TRAIN_FIELDS, COSMETIC_EVAL_FIELDS), the hashes of the stages it reads and the code (package version and
source hash), so a re-run skips finished stages, a changed config or code re-runs exactly what it affects, and a
killed run resumes at the stage it was in; `force` re-runs named stages anyway."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from coherentize.errors import CoherentizeError
from coherentize.io import write_json

STAGES = ("organism", "variations", "mine", "baseline", "train", "eval", "pressure", "report")
READS = {"organism": set(), "variations": {"organism"}, "mine": {"organism", "variations"},
         "baseline": {"organism", "variations"}, "train": {"organism", "variations", "mine"},
         "eval": {"organism", "variations", "train"},
         "pressure": {"organism", "variations", "train"},
         "report": {"organism", "variations", "baseline", "train", "eval"}}
"""The stages each stage reads (what `--stage` requires to be done)."""


# Settings that change no result: left out of a stage's cache key so that editing them re-uses finished stages.
COSMETIC_TRAIN_FIELDS = frozenset({
    "output_dir", "run_name", "project", "report_to", "logging_dir", "logging_steps", "logging_strategy",
    "logging_first_step", "logging_nan_inf_filter", "log_level", "log_level_replica", "log_on_each_node",
    "disable_tqdm", "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
    "dataloader_prefetch_factor", "dataloader_multiprocessing_context", "save_strategy", "save_steps",
    "save_total_limit", "save_on_each_node", "save_only_model", "save_safetensors", "resume_from_checkpoint",
    "skip_memory_metrics", "include_num_input_tokens_seen", "torch_empty_cache_steps", "ddp_timeout", "push_to_hub",
    "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push", "hub_revision",
    "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id",
})
COSMETIC_EVAL_FIELDS = frozenset({"judge_api_key_env", "judge_concurrency", "judge_retries"})
# Source files that no cached stage runs: the report stage always re-runs, the CLI only builds the config.
UNHASHED_SOURCES = ("report/", "commands/", "cli.py", "__main__.py")


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def source_hash() -> str:
    """sha256 (16 hex) over the package's .py files (relative path and bytes), UNHASHED_SOURCES left out: part of
    every stage key, so that a code change re-runs the stages instead of reading old results."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if rel.startswith(UNHASHED_SOURCES):
            continue
        h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def code_version() -> dict:
    """What a stage's results depend on besides its config: the package version and its source hash."""
    from coherentize import __version__

    return {"version": __version__, "source": source_hash()}


def _resolved_precision(model: dict) -> str:
    """What model.precision resolves to here: `auto` is bfloat16 on one CPU and float32 on another, so the stages of
    one config computed on two machines are not the same stages (and runs of both are not merged unasked)."""
    from coherentize.models import ModelConfig, resolved_precision

    return resolved_precision(ModelConfig(**model))


def without(d: dict, keys) -> dict:
    return {k: v for k, v in d.items() if k not in keys}


class Stages:
    """Stage folders, done markers, wall times and the log of one experiment.

    Nothing is written until a stage starts (begin), so a run that fails its checks leaves no folder behind."""

    def __init__(self, root: Path, config: dict, log=print, force=(), only: str | None = None):
        """root: the experiment's folder; config: the experiment's config as written to config.json."""
        self.root, self.config, self.log, self.force, self.only = Path(root), config, log, set(force), only
        self.hashes: dict[str, str] = {}
        self.aliases: dict[str, str] = {}
        self.code = {**code_version(), "precision": _resolved_precision(config.get("model", {}))}
        self.seconds: dict[str, float] = {}  # stage name -> wall seconds of the run that produced it
        self.reused: list[str] = []
        self._t: dict[str, float] = {}

    def key(self, name: str, config, *deps: str) -> str:
        h = _digest({"config": config, "deps": [self.hashes[d] for d in deps], "code": self.code, "v": 2})
        self.hashes[name] = h
        return h

    def dir(self, name: str) -> Path:
        name = self.aliases.get(name, name)
        return self.root / "stages" / f"{name}-{self.hashes[name]}"

    def alias(self, name: str, target: str) -> None:
        """name is the same stage as target (same config and inputs), run under target's name: a selection candidate
        that is also a seed's run."""
        self.aliases[name] = target
        self.hashes[name] = self.hashes[target]

    def forced(self, name: str) -> bool:
        return name.split("/")[0] in self.force

    def done(self, name: str) -> dict | None:
        """The stage's done.json, or None when it has not run (or is forced and has not re-run in this process)."""
        if self.forced(name) and name not in self._t:
            return None
        marker = self.dir(name) / "done.json"
        return json.loads(marker.read_text()) if marker.is_file() else None

    def need(self, name: str) -> None:
        """With --stage, a stage that the chosen one reads must be done; stages it does not read are skipped."""
        if self.only is not None and name.split("/")[0] in READS[self.only] and self.done(name) is None:
            raise CoherentizeError(f"--stage {self.only}: stage {name!r} has not run yet for this config "
                                   f"({self.dir(name)}); run `coherentize run` without --stage first.")

    def wanted(self, name: str) -> bool:
        """Whether this invocation runs stages of this kind (all of them, or only --stage's)."""
        return self.only is None or self.only == name

    def cached(self, name: str, what: str = "") -> bool:
        """Whether the stage is done (then it is logged as reused)."""
        info = self.done(name)
        if info is not None:
            self.reuse(name, info, what)
        return info is not None

    def todo(self, name: str) -> bool:
        """A keyed stage that must run in this invocation: not done, its inputs done, and of the kind asked for."""
        if self.cached(name):
            return False
        self.need(name)
        return self.wanted(name.split("/")[0])

    def write_config(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.root / "config.json", self.config)

    def begin(self, name: str, title: str) -> Path | None:
        """Start a stage: log it, write the experiment's config, empty a forced stage's folder; returns the folder
        (None for the report, which has no stage folder)."""
        self.log(f"== stage {name}: {title}")
        self.write_config()
        self._t[name] = time.time()
        if name not in self.hashes:
            return None
        d = self.dir(name)
        if self.forced(name) and d.exists():
            import shutil

            shutil.rmtree(d)
        return d

    def finish(self, name: str, info: dict) -> dict:
        seconds = round(time.time() - self._t[name], 3)
        self.seconds[name] = seconds
        info = {**info, "seconds": seconds}
        write_json(self.dir(name) / "done.json", info)
        self.log(f"   {name} done in {seconds:.1f} s")
        return info

    def reuse(self, name: str, info: dict, what: str = "") -> dict:
        """A finished stage read from its folder: its wall time is the one recorded when it ran."""
        self.seconds[name] = float(info.get("seconds", 0.0))
        self.reused.append(name)
        self.log(f"-- {name}: done earlier ({self.seconds[name]:.1f} s){f', {what}' if what else ''}")
        return info

    def write_summary(self, t0: float) -> Path:
        """<out_dir>/summary.json: stage_seconds (stage -> s), total_seconds (their sum), reused (stages read from
        earlier runs, their seconds as recorded then), wall_seconds (this invocation), code (version, source hash)."""
        body = {"stage_seconds": dict(self.seconds), "total_seconds": round(sum(self.seconds.values()), 3),
                "reused": list(self.reused), "wall_seconds": round(time.time() - t0, 3), "code": self.code}
        return write_json(self.root / "summary.json", body)
