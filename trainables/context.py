"""`TrialContext`: what every trial of a search needs besides its hyperparameters.

The data (root, split file, classes), the objective, the limits on what a model may cost, where
a multi-worker trial's Ray Train runs keep their checkpoints and its footprints are shared, and
the resources each trial runs with. The search builds it once
(`search.inputs.trial_context`), saves it as `context.json` in the results folder, and hands it to
its trials through `tune.with_parameters`: the sampler, `params.json` and trials.csv hold
hyperparameters only. `--resume`, `analysis.retrain` and `analysis.report` read it back
(`search.results_folder.read_context`); the bench scripts build it with the same function.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

CONTEXT_FILE = "context.json"
FOOTPRINTS_DIR = "footprints"  # in the results folder: the models' footprints its trials share
TRAIN_RUNS = "train_runs"  # in the results folder: the Ray Train runs of multi-worker trials


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class Resources:
    """What one trial runs on: the space's `resources:` section as `search.space` validates it (the
    one type of it: the space, the search record and every trial's context hold this)."""

    workers_per_trial: int = Field(1, ge=1, description="Ray Train workers per trial (data parallel)")
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(0, ge=0, description="fractions share a GPU, e.g. 0.25")
    loader_workers: int = Field(0, ge=0, description="DataLoader processes per worker for augmentation; 0 = in the "
                                                     "training process")
    compile: bool = Field(False, description="torch.compile the model (pays off on long GPU trials)")
    use_ray_train: bool = Field(False, description="run single-worker trials as a Ray Train TorchTrainer too, as "
                                                   "multi-worker trials always run (slower: several more processes "
                                                   "start per trial; bench/README.md)")

    @property
    def per_worker(self) -> dict[str, float]:
        """Ray resources one worker holds: its CPUs, and its GPUs when it has any."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.gpus_per_worker else {})}

    @property
    def ray_train(self) -> bool:
        """Whether the trial fits a Ray Train TorchTrainer (DDP), else trains in its own Tune actor."""
        return self.workers_per_trial > 1 or self.use_ray_train


@dataclass(frozen=True)
class TrialContext:
    data_root: str
    split_file: str
    class_names: tuple[str, ...]
    metric: str
    mode: str
    cache_dir: str  # "": each node's own default cache (a search whose data or results are in a bucket)
    cache_max_gb: float | None
    train_storage: str  # Ray Train runs of TorchTrainer trials, each named after its Tune trial
    keep_checkpoints: int
    max_failures: int
    resources: Resources
    # the space's search.constraints as figure -> largest allowed value (trainables.models.footprint):
    # a trial whose model is over one is not trained
    limits: dict[str, float]
    # where the search's trials share their models' footprints (trainables.models.footprint.measure_once);
    # "": results in a bucket, each node shares them in its own cache
    footprint_dir: str

    @property
    def footprints(self) -> Path:
        """Where this search's trials share their footprints: the results folder's, or else (results
        in a bucket) the node's image cache's."""
        from trainables.data.dataset import default_cache_dir

        return Path(self.footprint_dir or Path(self.cache_dir or default_cache_dir()) / FOOTPRINTS_DIR)

    def on_this_machine(self) -> "TrialContext":
        """This context, its image cache one this machine can write: the search's own where it
        can, else this machine's default cache (analysis of a results folder made elsewhere:
        its final-model refits and its test split decode here, not into another machine's path)."""
        from trainables.data.dataset import default_cache_dir

        if not self.cache_dir:  # each machine's own already
            return self
        path = Path(self.cache_dir)
        existing = next(p for p in (path, *path.parents) if p.exists())
        if os.access(existing, os.W_OK):
            return self
        return dataclasses.replace(self, cache_dir=str(default_cache_dir()))

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / CONTEXT_FILE
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "TrialContext":
        raw = json.loads((Path(folder) / CONTEXT_FILE).read_text())
        return cls(**{**raw, "class_names": tuple(raw["class_names"]), "resources": Resources(**raw["resources"])})
