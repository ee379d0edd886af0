"""What other models give a run: `--init` starts from a trained model's weights (fine-tuning, with
classifier surgery when the classes differ) and `--teacher` adds their softened probabilities to
the loss (knowledge distillation)."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferlab.checkpoint import load_model
from ferlab.errors import FerlabError
from ferlab.labels import canonical_name
from ferlab.models.registry import last_linear
from ferlab.inference.onnxrt import OnnxModel
from ferlab.training.config import TrainConfig
from ferlab.inference.tta import tta_probs


def load_teachers(cfg: TrainConfig, classes, device) -> list[nn.Module]:
    """The --teacher models in eval mode; each must name the data's classes in the same order."""
    teachers = []
    for spec in filter(None, (t.strip() for t in cfg.teacher.split(","))):
        model, card = load_model(spec, device)
        if list(card.get("classes", [])) != list(classes):
            raise FerlabError(f"--teacher {spec}: its classes {card.get('classes')} are not the data's {list(classes)}")
        teachers.append(model.to(memory_format=torch.channels_last) if cfg.channels_last else model)
    return teachers


def load_init_weights(model: nn.Module, cfg: TrainConfig, classes, log=print) -> None:
    """--init: copy a trained model's weights into `model` before training (fine-tuning). When its
    classes differ from the data's, the classifier (every registry model ends in one nn.Linear)
    keeps the rows of the classes both name (CK+'s "sadness" is FER2013's "sad") and starts the
    others afresh."""
    source, card = load_model(cfg.init)
    if isinstance(source, OnnxModel):
        raise FerlabError(f"--init {cfg.init}: an ONNX model has no weights to train; start from its .safetensors or run directory")
    if card["model"] != cfg.model:
        raise FerlabError(f"--init {cfg.init}: it is a {card['model']} model, not the {cfg.model} being trained")
    state = source.state_dict()
    same_classes = list(card.get("classes", [])) == list(classes)
    if not same_classes:
        classifier = last_linear(model)[0]
        head = {k[len(classifier) + 1:]: state.pop(k) for k in list(state) if k.startswith(classifier + ".")}
    try:
        result = model.load_state_dict(state, strict=same_classes)
        if not same_classes and (result.unexpected_keys or any(not k.startswith(classifier + ".") for k in result.missing_keys)):
            raise RuntimeError(f"unmatched layers {(result.missing_keys + result.unexpected_keys)[:4]}")
    except RuntimeError as e:
        raise FerlabError(f"--init {cfg.init}: weights do not fit {cfg.model} with {cfg.model_kwargs or 'default'} "
                          f"settings ({str(e).splitlines()[-1].strip()[:160]})") from None
    if same_classes:
        log(f"initialised from {card['weights_path']}: all layers")
        return
    source_row = {canonical_name(c): i for i, c in enumerate(card.get("classes", [])) if canonical_name(c)}
    layer, kept = model.get_submodule(classifier), []
    with torch.no_grad():
        for row, name in enumerate(classes):
            i = source_row.get(canonical_name(name))
            if i is not None:
                layer.weight[row] = head["weight"][i]
                if layer.bias is not None and "bias" in head:
                    layer.bias[row] = head["bias"][i]
                kept.append(name)
    log(f"initialised from {card['weights_path']}: all layers but the classifier {classifier!r}, which keeps the "
        f"rows of {', '.join(kept) or 'no class'} and starts {', '.join(c for c in classes if c not in kept) or 'none'} afresh")


def distillation_loss(logits, x, teachers, cfg: TrainConfig) -> torch.Tensor:
    """T^2 * KL(teacher || student) at temperature T (Hinton et al. 2015); the teacher sees the same
    augmented (and mixed) batch, and an ensemble of teachers gives its mean probabilities."""
    t = cfg.distill_temperature
    with torch.no_grad():
        target = sum(tta_probs(lambda v, m=m: m(v) / t, x, cfg.teacher_tta) for m in teachers) / len(teachers)
    return F.kl_div(F.log_softmax(logits / t, 1), target.float(), reduction="batchmean") * t * t
