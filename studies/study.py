"""A study: variants x seeds of the pipeline as DVC experiments, run by one command, tabulated by another.

    python studies/study.py run studies/specs/NAME.yaml [--jobs N] [--queue-only]
    python studies/study.py table studies/specs/NAME.yaml [--all-commits]

A study file (studies/specs/*.yaml; `StudySpec` below says what each key means) names the variants as `-S`
overrides, the seeds, the settings every run shares (a preset file and more overrides) and the stage the runs
go up to. Every run is one experiment named NAME-VARIANT-sSEED.

`run` checks every run's params first (a bad override fails before anything is queued), queues each run that
is not already finished or queued (`dvc exp run --queue -n NAME-VARIANT-sSEED TARGET -S ...`) and runs the
queue (`dvc exp run --run-all`). A study that was stopped resumes where it stopped: finished runs are not
queued again. Queued runs start from HEAD: commit a finished run of the study's shared settings first (its
params.yaml and dvc.lock), so that each run re-does only the stages its variant changes. Without that, each run
trains the decoder and the GPT again: DVC restores other stages from its run cache, but not stages with a
`persist` output (the training checkpoints).

`table` reads the finished runs (what `dvc exp show` holds) and writes docs/studies/NAME.md and .csv (per
variant: the runs, then mean and min-max over seeds of the validation columns that decide and of the test
columns that only report), NAME_curves.png (the per-epoch curve of every run) and NAME_samples.png (a row of
samples per variant, from its first seed), NAME_figures.png (the spec's `figure`, e.g. a decoder's
reconstructions, per variant), and puts the Markdown into the study's page between the lines
`<!-- study:NAME -->` and `<!-- /study:NAME -->`.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from statistics import mean

import numpy as np
import yaml
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.ticker import MaxNLocator
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.core.atomic import write_bytes
from pipeline.core.errors import PipelineError
from pipeline.core.experiments import Experiment, formatted, read_csv_rows, read_experiments, read_file
from pipeline.core.images import tile_rows
from pipeline.core.plots import labelled_rows_figure, save_png, write_csv
from pipeline.gpt.sampling import GAP, grid_rows, read_samples
from pipeline.params import DEFAULT_PARAMS, apply_words, parse_params, preset_words, read_yaml

OUT = Path("docs/studies")
SAMPLES = "data/samples/samples.h5"
N_CLASSES = 10
REF_SAFE = r"^[A-Za-z0-9][A-Za-z0-9_]*$"  # a part of a git ref name, without the "-" that joins the parts


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Seeds(Spec):
    param: str  # the params key a seed sets, e.g. train.seed
    values: list[int] = Field(min_length=1)


class Curve(Spec):
    file: str  # a CSV every run writes, e.g. plots/train_loss.csv
    x: str  # its columns
    y: str
    label: str  # the y axis


class StudySpec(Spec):
    name: str = Field(pattern=REF_SAFE)  # the experiments' name prefix and the output files' name
    title: str
    page: str | None = None  # a docs page with the `<!-- study:NAME -->` block the table replaces
    target: str = "evaluate"  # the stage every run goes up to (dvc exp run TARGET)
    preset: str | None = None  # a file of `-S section.key=value` lines applied first, e.g. presets/cpu.args
    shared: list[str] = []  # `section.key=value` overrides of every run, after the preset
    variants: dict[str, list[str]] = Field(min_length=1)  # variant name (as `name`) -> its overrides
    seeds: Seeds
    decide: list[str] = Field(min_length=1)  # metrics the study decides by: validation split or train statistics
    report: list[str] = []  # metrics it only reports (the test split's among them)
    curve: Curve | None = None
    samples: bool = True  # a row of samples per variant (the target must include the sample stage)
    figure: str | None = None  # a PNG every run writes (e.g. plots/reconstructions.png), shown once per variant


def load_spec(path: Path) -> StudySpec:
    try:
        spec = StudySpec.model_validate(read_yaml(path.read_text()))
    except (OSError, yaml.YAMLError) as e:
        raise PipelineError(f"{path}: cannot read the study file: {e}") from None
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'file'}: {x['msg']}" for x in e.errors())
        raise PipelineError(f"{path}: {problems} (the keys are described in studies/study.py StudySpec)") from None
    bad = [v for v in spec.variants if not re.match(REF_SAFE, v)]
    if bad:
        raise PipelineError(f"{path}: variant names {bad} must be letters, digits and _ (they name git refs)")
    return spec


def run_name(spec: StudySpec, variant: str, seed: int) -> str:
    return f"{spec.name}-{variant}-s{seed}"


def runs_of(spec: StudySpec) -> dict[str, tuple[str, int]]:
    """Every run of the study: experiment name -> (variant, seed)."""
    return {run_name(spec, v, s): (v, s) for v in spec.variants for s in spec.seeds.values}


def overrides(spec: StudySpec, variant: str, seed: int) -> list[str]:
    """The `-S` words of one run: the preset's, the shared ones, the variant's, the seed."""
    words = preset_words(spec.preset) if spec.preset else []
    for override in [*spec.shared, *spec.variants[variant], f"{spec.seeds.param}={seed}"]:
        words += ["-S", override]
    return words


def check_params(spec: StudySpec, spec_path: Path) -> None:
    """Every run's params as DVC will write them, validated now: a typo fails here, naming the run and key."""
    raw = read_yaml(DEFAULT_PARAMS.read_text())
    for name, (variant, seed) in runs_of(spec).items():
        try:
            parse_params(apply_words(raw, overrides(spec, variant, seed), str(spec_path)), spec_path)
        except PipelineError as e:
            raise PipelineError(f"run {name}: {e}") from None


def states() -> dict[str, str]:
    """Experiment name -> DVC's state of it (Success, Queued, Running, Failed) for HEAD's experiments."""
    import dvc.api

    return {r["Experiment"]: r.get("State") or "Success" for r in dvc.api.exp_show() if r.get("Experiment")}


def dvc(*args: str) -> None:
    subprocess.run(["dvc", *args], check=True)


def run(spec: StudySpec, spec_path: Path, jobs: int, queue_only: bool) -> None:
    check_params(spec, spec_path)
    if subprocess.run(["git", "cat-file", "-e", "HEAD:dvc.lock"], capture_output=True).returncode != 0:
        print(
            "warning: HEAD has no dvc.lock, so every run trains the decoder and the GPT again (DVC's run cache does "
            "not restore stages with persist outputs); commit a finished baseline run (params.yaml, dvc.lock) first",
            file=sys.stderr,
        )
    known = states()
    queued = 0
    for name, (variant, seed) in runs_of(spec).items():
        state = known.get(name)
        if state in ("Success", "Queued", "Running"):
            print(f"{name}: {state.lower()}, not queued again")
            continue
        if state == "Failed":  # its queue entry would hold the name
            dvc("queue", "remove", name)
        dvc("exp", "run", "--queue", "-n", name, spec.target, *overrides(spec, variant, seed))
        queued += 1
    print(f"{queued} of {len(runs_of(spec))} runs queued")
    if not queue_only and (queued or any(known.get(n) == "Queued" for n in runs_of(spec))):
        dvc("exp", "run", "--run-all", "-j", str(jobs))
    print(f"then: python studies/study.py table {spec_path}")


# ---- the table ----------------------------------------------------------------------------------------------


def spread(values: list[float], metric: str) -> str:
    if len(values) == 1:
        return formatted(metric, values[0])
    return f"{formatted(metric, mean(values))} ({formatted(metric, min(values))}-{formatted(metric, max(values))})"


def table_rows(spec: StudySpec, runs: dict[str, Experiment]) -> list[dict]:
    """Per variant: its overrides, its finished seeds and every decide/report metric's values over them."""
    rows = []
    for variant, changes in spec.variants.items():
        done = [runs[run_name(spec, variant, s)] for s in spec.seeds.values if run_name(spec, variant, s) in runs]
        values = {m: [r.metrics[m] for r in done if m in r.metrics] for m in [*spec.decide, *spec.report]}
        rows.append({"variant": variant, "overrides": changes, "seeds": len(done), "values": values})
    return rows


def markdown(spec: StudySpec, spec_path: Path, rows: list[dict], figures: list[Path], where: Path) -> str:
    """The study's Markdown for a file in the folder `where` (its figures linked relative to it)."""
    metrics = [*spec.decide, *spec.report]
    head = ["variant", "overrides", "seeds", *(f"{m} (decides)" for m in spec.decide), *spec.report]
    lines = [
        f"{spec.title}: {sum(r['seeds'] for r in rows)} runs, made by `python studies/study.py table {spec_path}` "
        f"from the experiments of `python studies/study.py run {spec_path}`. The study decides by the columns "
        "marked (decides): validation images or train statistics; the others only report (test images among them). "
        "Values: mean (min-max) over the seeds.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [spread(r["values"][m], m) if r["values"][m] else "-" for m in metrics]
        changes = ", ".join(f"`{c}`" for c in r["overrides"]) or "(shared settings only)"
        lines.append("| " + " | ".join([r["variant"], changes, str(r["seeds"]), *cells]) + " |")
    lines += ["", *(f"![{spec.name}]({os.path.relpath(f, where)})" for f in figures)]
    return "\n".join(lines) + "\n"


def write_table_csv(spec: StudySpec, rows: list[dict], target: Path) -> None:
    metrics = [*spec.decide, *spec.report]
    header = ["variant", "overrides", "seeds", *(f"{m}_{s}" for m in metrics for s in ("mean", "min", "max"))]
    body = []
    for r in rows:
        stats = [f(v) if (v := r["values"][m]) else "" for m in metrics for f in (mean, min, max)]
        body.append([r["variant"], " ".join(r["overrides"]), r["seeds"], *stats])
    write_csv(target, header, body)


def curves_png(spec: StudySpec, runs: dict[str, Experiment], target: Path) -> None:
    c = spec.curve
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    colours = {v: f"C{i}" for i, v in enumerate(spec.variants)}
    for name, (variant, seed) in runs_of(spec).items():
        if name in runs:
            points = read_csv_rows(".", c.file, runs[name].rev)
            xs, ys = [float(p[c.x]) for p in points], [float(p[c.y]) for p in points]
            first = seed == spec.seeds.values[0]
            ax.plot(xs, ys, "o-", color=colours[variant], alpha=1 if first else 0.5, label=variant if first else None)
    ax.set(xlabel=c.x, ylabel=c.label)
    ax.set_title(textwrap.fill(f"{spec.title}: {c.y} per {c.x} (one line per run)", 80), fontsize=8)  # long titles
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    save_png(fig, target)


def first_seeds(spec: StudySpec, runs: dict[str, Experiment]) -> list[tuple[str, Experiment]]:
    """Per variant with a finished run: a label "VARIANT (sSEED)" and the run of its first finished seed."""
    firsts = []
    for variant in spec.variants:
        done = [s for s in spec.seeds.values if run_name(spec, variant, s) in runs]
        if done:
            firsts.append((f"{variant} (s{done[0]})", runs[run_name(spec, variant, done[0])]))
    return firsts


def samples_png(spec: StudySpec, runs: dict[str, Experiment], target: Path) -> None:
    """A row per variant: the first sample of every class of its first finished seed (unconditional: the first
    ten samples). Every run samples with the same sample.seed, so rows differ by the variant and the seed."""
    rows, names = [], []
    for label, run in first_seeds(spec, runs):
        with tempfile.NamedTemporaryFile(suffix=".h5") as tmp:
            tmp.write(read_file(".", SAMPLES, run.rev))
            tmp.flush()
            s = read_samples(tmp.name)
        picked = np.concatenate(grid_rows(s.labels, s.conditional, N_CLASSES, 1))[:N_CLASSES]
        rows.append(s.images[picked])
        names.append(label)
    image = tile_rows(rows, N_CLASSES, GAP)
    save_png(labelled_rows_figure(image, rows[0].shape[1], names, GAP, extra_width=2), target)


def figures_png(spec: StudySpec, runs: dict[str, Experiment], target: Path) -> None:
    """The spec's figure of each variant's first finished seed, one above the other, each titled by its variant."""
    shown = [
        (label, imread(io.BytesIO(read_file(".", spec.figure, run.rev)), format="png"))
        for label, run in first_seeds(spec, runs)
    ]
    height, width = shown[0][1].shape[:2]
    fig = Figure(figsize=(width / 50, len(shown) * (height / 50 + 0.3)))
    for i, (label, png) in enumerate(shown):
        ax = fig.add_subplot(len(shown), 1, i + 1)
        ax.imshow(png, interpolation="nearest")
        ax.set_title(label, fontsize=9, loc="left")
        ax.set_axis_off()
    save_png(fig, target)


def put_in_page(page: Path, name: str, text: str) -> None:
    start, end = f"<!-- study:{name} -->", f"<!-- /study:{name} -->"
    doc = page.read_text()
    if start not in doc or end not in doc:
        raise PipelineError(f"{page}: add the lines `{start}` and `{end}` where the study's table goes")
    before, rest = doc.split(start, 1)
    after = rest.split(end, 1)[1]
    write_bytes(page, f"{before}{start}\n{text}{end}{after}".encode())


def table(spec: StudySpec, spec_path: Path, all_commits: bool) -> None:
    wanted = runs_of(spec)
    runs = {r.name: r for r in read_experiments(all_commits=all_commits) if r.name in wanted}
    if not runs:
        raise PipelineError(f"no finished run of {spec_path}: run `python studies/study.py run {spec_path}` first")
    missing = sorted(set(wanted) - set(runs))
    rows = table_rows(spec, runs)
    figures = []
    if spec.curve:
        figures.append(OUT / f"{spec.name}_curves.png")
        curves_png(spec, runs, figures[-1])
    if spec.samples:
        figures.append(OUT / f"{spec.name}_samples.png")
        samples_png(spec, runs, figures[-1])
    if spec.figure:
        figures.append(OUT / f"{spec.name}_figures.png")
        figures_png(spec, runs, figures[-1])
    note = f"\nNot finished (left out): {', '.join(missing)}.\n" if missing else ""
    text = markdown(spec, spec_path, rows, figures, OUT) + note
    write_bytes(OUT / f"{spec.name}.md", text.encode())
    write_table_csv(spec, rows, OUT / f"{spec.name}.csv")
    if spec.page:
        put_in_page(Path(spec.page), spec.name, markdown(spec, spec_path, rows, figures, Path(spec.page).parent) + note)
    print(text, end="")
    written = [OUT / f"{spec.name}.md", OUT / f"{spec.name}.csv", *figures, *([spec.page] if spec.page else [])]
    print(f"wrote {', '.join(map(str, written))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="queue the runs not yet finished or queued, then run the queue")
    r.add_argument("spec", type=Path)
    r.add_argument("--jobs", type=int, default=1, help="queue workers (default 1: the runs share the CPUs/GPU)")
    r.add_argument("--queue-only", action="store_true", help="queue, do not run (dvc exp run --run-all later)")
    t = sub.add_parser("table", help="the finished runs -> docs/studies/NAME.{md,csv,png} and the page's block")
    t.add_argument("spec", type=Path)
    t.add_argument("--all-commits", action="store_true", help="also runs made at earlier commits")
    args = ap.parse_args()
    try:
        spec = load_spec(args.spec)
        if args.command == "run":
            run(spec, args.spec, args.jobs, args.queue_only)
        else:
            table(spec, args.spec, args.all_commits)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except subprocess.CalledProcessError as e:
        print(f"error: {' '.join(e.cmd)} exited with {e.returncode} (its output is above)", file=sys.stderr)
        sys.exit(e.returncode or 1)


if __name__ == "__main__":
    main()
