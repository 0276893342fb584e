"""README's Python example (tests/test_docs.py checks that README shows exactly this code and runs it; mypy checks it).

It reads a folder of images, ``world/`` (``train/``, ``val/``, ``test/`` class folders and ``ood/sketch/``), which
README's line before it writes offline: ``fdalign world render --out world --classes circle square star
--ood-styles sketch --train-per-class 4 --val-per-class 2 --test-per-class 4``. Point ``data=`` at your own folder.
"""

import fdalign

config = fdalign.TrainConfig(model="fdalign-world", data="world", shots=2, epochs=1, progress=False, out="runs/quick")
run = fdalign.finetune(config)  # = fdalign train: writes runs/quick/ (metrics.json, report.md, model/, ...)
print(run.metrics["test"]["fine-tuned"]["top1"], run.selection["epoch"]["chosen"])
evaluation = fdalign.evaluate(run.out, "world", ood=["sketch=world/ood/sketch"])  # = fdalign eval
print(evaluation.metrics["sketch"]["fine-tuned"]["top1"])
predictions = fdalign.predict(run.out, ["world/test"], out="predictions.csv", topk=2)  # = fdalign predict
