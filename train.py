"""Train a CLIP dual encoder: `python train.py --config configs/clip_italian.py --workdir runs/it`.

With no arguments it runs the offline demo (configs/demo.py) in runs/demo. Running again with the
same --workdir resumes from the latest checkpoint. Override any config key on the command line,
e.g. --config.train.batch_size=4096.
"""

import os
import sys

from absl import app, flags
from ml_collections import config_flags

HERE = os.path.dirname(os.path.abspath(__file__))
config_flags.DEFINE_config_file("config", os.path.join(HERE, "configs", "demo.py"),
                                "Python config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (local or gs://); default runs/<config name>.")
flags.DEFINE_string("coordinator", None, "host:port of process 0, for multi-process runs off TPU/SLURM.")
flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with automatic settings "
                  "(TPU pods, SLURM).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
    from clip_jax.sharding import initialize_distributed

    initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id, auto=FLAGS.distributed)
    from clip_jax.train import train

    config_name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
    workdir = FLAGS.workdir or os.path.join("runs", config_name)
    summary = train(FLAGS.config, workdir)
    import jax

    # The demo report reloads the checkpoint on one process; in a multi-process run orbax would wait for
    # the others, so it is skipped there.
    if jax.process_count() == 1 and FLAGS.config.data.source == "shapes" and not summary["preempted"]:
        from clip_jax.demo import report

        summary["demo"] = report(FLAGS.config, workdir)
    if jax.process_index() == 0:
        print(f"\nDone: step {summary['step']} ({summary['phase']}), preempted={summary['preempted']}.")
        for key, value in (summary.get("val") or {}).items():
            print(f"  {key}: {value:.4f}")
        print(f"Checkpoints, TensorBoard logs and metrics.jsonl are in {workdir}.")


if __name__ == "__main__":
    sys.exit(app.run(main))
