# The names of ``fdalign`` for type checkers and the API docs. At run time ``__init__.py`` loads them lazily
# (PEP 562), which a type checker cannot follow; keep this list equal to its ``_EXPORTS`` (tests/test_docs.py).
from fdalign.backends import load_clip as load_clip
from fdalign.backends.custom import as_backend as as_backend
from fdalign.errors import FDAlignError as FDAlignError
from fdalign.losses import FDAlignLoss as FDAlignLoss
from fdalign.prediction import Predictions as Predictions
from fdalign.train.config import TrainConfig as TrainConfig
from fdalign.train.meta_config import MetaConfig as MetaConfig
from fdalign.workflows.deploy import export as export
from fdalign.workflows.deploy import export_run as export_run
from fdalign.workflows.deploy import predict as predict
from fdalign.workflows.deploy import predict_images as predict_images
from fdalign.workflows.evaluation import EvalConfig as EvalConfig
from fdalign.workflows.evaluation import Evaluation as Evaluation
from fdalign.workflows.evaluation import evaluate as evaluate
from fdalign.workflows.kshot import Run as Run
from fdalign.workflows.kshot import finetune as finetune
from fdalign.workflows.loaded import FineTunedModel as FineTunedModel
from fdalign.workflows.loaded import list_models as list_models
from fdalign.workflows.loaded import load_run as load_run
from fdalign.workflows.meta import MetaEvalConfig as MetaEvalConfig
from fdalign.workflows.meta import MetaRun as MetaRun
from fdalign.workflows.meta import meta_evaluate as meta_evaluate
from fdalign.workflows.meta import meta_train as meta_train

__version__: str
__all__: list[str]
