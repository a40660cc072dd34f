"""2-D maps of a run's item (or user) vectors, and an Embedding Projector export (``twotower-plot``).

Projection: UMAP when ``umap-learn`` is installed, else t-SNE when scikit-learn is, else PCA (``method=``
forces one). Colours: the most frequent values of a metadata column, the rest grey; labels: the titles
(or ids) of the most popular ids.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import polars as pl

from twotower import checks
from twotower.errors import TwoTowerError
from twotower.files import atomic_path, write_text
from twotower.run import Run

log = logging.getLogger("twotower")
METHODS = ("auto", "umap", "tsne", "pca")


def available_method(method: str) -> str:
    checks.choice("method", method, METHODS)
    if method != "auto":
        module, package = {"umap": ("umap", "umap-learn"), "tsne": ("sklearn", "scikit-learn"),
                           "pca": ("numpy", "numpy")}[method]
        if importlib.util.find_spec(module) is None:
            raise TwoTowerError(f"method={method} needs the '{package}' package: pip install {package} "
                                "(or pip install -e '.[umap]' / '.[plots]'), or use method=pca")
        return method
    for candidate, module in (("umap", "umap"), ("tsne", "sklearn")):
        if importlib.util.find_spec(module) is not None:
            return candidate
    return "pca"


def project_2d(vectors: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """(n, 2) coordinates; cosine geometry (unit vectors) for every method."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(unit)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(unit) - 1) // 3)))
        return TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity,
                    random_state=seed).fit_transform(unit)
    centred = unit - unit.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    return centred @ components[:2].T


def colour_groups(frame: pl.DataFrame, column: str | None, top: int) -> list[str]:
    """One group name per row: the ``top`` most frequent values of ``column``, the rest 'other'."""
    if column is None:
        return ["all"] * frame.height
    if column not in frame.columns:
        options = [c for c in frame.columns if c not in ("index", "id")]
        raise TwoTowerError(f"no metadata column '{column}' to colour by; available: {options}")
    values = frame[column]
    if isinstance(values.dtype, pl.List):
        values = values.list.first()
    values = values.cast(pl.String).fill_null("unknown")
    frequent = values.filter(values != "unknown").value_counts(sort=True).head(top)[column].to_list()
    return [v if v in frequent else "other" for v in values.to_list()]


def spread_out(coordinates: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` of ``candidates`` (in order of preference) that are not on top of each other."""
    span = np.ptp(coordinates, axis=0).max() or 1.0
    chosen: list[int] = []
    for row in candidates:
        if all(np.linalg.norm(coordinates[row] - coordinates[other]) > 0.08 * span for other in chosen):
            chosen.append(int(row))
        if len(chosen) == count:
            break
    return np.array(chosen, dtype=np.int64)


def default_colour(frame: pl.DataFrame) -> str | None:
    for column in ("genre_group", "genre", "genres", "occupation", "country"):
        if column in frame.columns:
            return column
    return None


def draw(coordinates: np.ndarray, groups: list[str], labels: dict[int, str], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(10, 8))
    names = sorted(set(groups) - {"other", "all"}, key=lambda name: -groups.count(name))
    palette = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    rest = np.array([g in ("other", "all") for g in groups])
    size = 6 if len(groups) > 5000 else 14
    axis.scatter(*coordinates[rest].T, s=size, c="#c8c8c8", alpha=0.5, linewidths=0,
                 label="other" if "other" in groups else None)
    for number, name in enumerate(names):
        chosen = np.array([g == name for g in groups])
        axis.scatter(*coordinates[chosen].T, s=size, color=palette(number % palette.N), alpha=0.8, linewidths=0,
                     label=f"{name} ({int(chosen.sum())})")
    for row, text in labels.items():
        x, y = coordinates[row]
        axis.scatter([x], [y], s=40, facecolors="none", edgecolors="black", linewidths=0.8)
        axis.annotate(text[:40], (x, y), xytext=(4, 4), textcoords="offset points", fontsize=8,
                      bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "none", "alpha": 0.7})
    axis.set_title(title)
    axis.set_xticks([])
    axis.set_yticks([])
    if names:
        axis.legend(loc="best", fontsize=8, markerscale=1.5, frameon=True)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=120, format="png")
    plt.close(figure)


def export_projector(vectors: np.ndarray, frame: pl.DataFrame, folder: Path) -> None:
    """``vectors.tsv``, ``metadata.tsv`` and ``projector_config.pbtxt`` for the Embedding Projector."""
    columns = [c for c in frame.columns if c != "index" and not isinstance(frame.schema[c], pl.List)]
    metadata = frame.select(pl.col(c).cast(pl.String).fill_null("").str.replace_all(r"[\t\n]", " ") for c in columns)
    write_text("\n".join("\t".join(f"{v:.6g}" for v in row) for row in vectors) + "\n", folder / "vectors.tsv")
    with atomic_path(folder / "metadata.tsv") as temporary:
        metadata.write_csv(temporary, separator="\t", quote_style="never")
    write_text('embeddings {\n  tensor_path: "vectors.tsv"\n  metadata_path: "metadata.tsv"\n}\n',
               folder / "projector_config.pbtxt")


def plot_run(run_dir: str | Path, side: str = "items", color: str | None = "auto", method: str = "auto",
             labels: int = 12, top_groups: int = 8, output_file: str | None = None, projector: bool = False,
             seed: int = 0) -> Path:
    checks.choice("side", side, ("items", "users"))
    run = Run.open(run_dir)
    paths = run.paths
    name = run.names["item" if side == "items" else "user"]
    vocab = run.item_vocab if side == "items" else run.user_vocab
    # the towers' vectors, without the popularity prior's coordinate where the run has one
    vectors = (run.item_vectors if side == "items" else run.user_vectors)[:, :run.manifest.model_dim]
    column = default_colour(vocab.frame) if color == "auto" else color
    method = available_method(method)
    log.info("projecting %d %s vectors with %s", len(vectors), name, method)
    coordinates = project_2d(vectors, method, seed)
    train = run.split("train")
    counts = np.bincount(train["item" if side == "items" else "user"].to_numpy(), minlength=len(vocab))
    labelled = spread_out(coordinates, np.argsort(-counts, kind="stable")[:10 * labels], labels)
    names = vocab.column("title", labelled) if vocab.has_titles else [None] * len(labelled)
    label_texts = {int(row): str(title if title is not None else vocab.ids[int(row)])
                   for row, title in zip(labelled, names, strict=True)}
    title = f"{len(vectors):,} {name}s ({method.upper()})"
    if column:
        title += f", coloured by {column.replace('_', ' ')}"
    path = Path(output_file) if output_file else paths.root / "plots" / f"{side}-{column or 'plain'}.png"
    draw(coordinates, colour_groups(vocab.frame, column, top_groups), label_texts, title, path)
    if projector:
        export_projector(vectors, vocab.frame, paths.root / "projector" / side)
    return path
