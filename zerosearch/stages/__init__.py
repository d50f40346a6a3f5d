"""One module per DVC stage, named as in dvc.yaml: data, base, simulator_sft, train, evaluate.
Each exposes ``run(cfg, tracker)``; stages never import each other."""
