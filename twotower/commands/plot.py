"""twotower-plot: a 2-D map of a run's item (or user) vectors, and an Embedding Projector export.

    twotower-plot run_dir=DIR                               # items coloured by genre (where there is one)
    twotower-plot run_dir=DIR side=users color=occupation
    twotower-plot run_dir=DIR method=pca projector=true     # also DIR/projector/ for projector.tensorflow.org

The PNG goes to ``DIR/plots/<side>-<color>.png`` (``twotower.serving.maps`` draws it).
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from twotower.commands.cli import answer_help, check_options, reported_errors
from twotower.serving.maps import plot_run


@hydra.main(version_base="1.3", config_path="pkg://twotower.conf", config_name="plot")
def app(cfg: DictConfig) -> None:
    with reported_errors(cfg.debug):
        check_options(cfg, "plot")
        path = plot_run(cfg.run_dir, cfg.side, cfg.color, cfg.method, cfg.labels, cfg.top_groups, cfg.output_file,
                        cfg.projector, cfg.seed)
        print(path)


def main() -> None:
    answer_help("twotower-plot", "plot")
    app()


if __name__ == "__main__":
    main()
