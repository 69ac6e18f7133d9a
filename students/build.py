"""`build_student`: a zoo architecture from scratch or initialised from any checkpoint the teacher layer reads."""
from __future__ import annotations

from contextlib import nullcontext

from transformers import Tipsv2TextModel, Tipsv2VisionModel
from transformers.initialization import no_init_weights

from students.heads import ProjectionHeads
from students.model import Student
from students.timm_student import build_timm_student
from students.zoo import get_arch
from teachers import load_teacher
from teachers.student_checkpoint import check_state_dict
from teachers.timm_vision import is_timm_name, timm_patch_size
from common.errors import UserError


def build_student(
    name: str,
    *,
    teacher_width: int | None = None,
    text: bool = True,
    init: str | None = None,
    text_init: str | None = None,
    vocab_size: int | None = None,
    image_size: int | None = None,
    tokenizer=None,
    head: str = "linear",
    gradient_checkpointing: bool = False,
    timm_kwargs: dict | None = None,
    feature_stride: int | None = None,
) -> Student:
    """Build a zoo student, or a `timm:NAME` one (`students.timm_student`: `init` is then a local timm weights
    file, `timm_kwargs` go to `timm.create_model`, `feature_stride` picks the feature level, default the last).

    init:       a teacher spec (hub id, save_pretrained dir, official .npz, student dir) whose TIPSv2
                towers have exactly this architecture's shapes (the vocabulary may differ); its vision
                (and, unless text=False or text_init is given, text) weights, tokenizer and temperature
                are copied.
    text_init:  a teacher spec whose text tower (and tokenizer, temperature) is copied as it is (its
                depth/heads/vocabulary); its width must equal the student's width.
    vocab_size: from `tokenizer` when given, else 32000; with init/text_init the checkpoint's tokenizer
                decides (passing one with another vocabulary is an error).
    image_size: the native resolution (position-embedding grid); defaults to the zoo entry's.
    head:       "linear" or "mlp" projection heads, built when `teacher_width` is given.
    """
    if is_timm_name(name):
        return build_timm_student(name, teacher_width=teacher_width, text=text, init=init, text_init=text_init,
                                  image_size=image_size, head=head, timm_kwargs=timm_kwargs,
                                  feature_stride=feature_stride, gradient_checkpointing=gradient_checkpointing)
    if timm_kwargs or feature_stride is not None:
        raise UserError(f"timm_kwargs / feature_stride are for timm:NAME students; {name} is a zoo student")
    arch = get_arch(name)
    if tokenizer is not None:
        if vocab_size is not None and vocab_size != len(tokenizer):
            raise UserError(f"vocab_size={vocab_size} differs from the tokenizer's {len(tokenizer)} tokens")
        vocab_size = len(tokenizer)
    config = arch.build_config(vocab_size=vocab_size, image_size=image_size)
    temperature = config.temperature_init_value
    text_spec = (text_init or init) if text else None
    if text_init is not None and not text:
        raise UserError("text_init=... needs a text tower; drop text=False")
    metadata = {}
    sources: dict[str, object] = {}  # init and text_init may name the same checkpoint: load it once

    with no_init_weights() if init is not None else nullcontext():  # random weights would be overwritten
        vision = Tipsv2VisionModel(config.vision_config)
    if init is not None:
        source = _tipsv2_teacher(init, "init", sources)
        _copy_tower(vision, source.vision, f"{name} vision tower", init)
        metadata["init"] = {"spec": init, "fingerprint": source.fingerprint}

    text_model = Tipsv2TextModel(config.text_config) if text and text_spec is None else None
    if text_spec is not None:
        option = "text_init" if text_init is not None else "init"
        source = _tipsv2_teacher(text_spec, option, sources)
        if source.text is None:
            raise UserError(f"{option}={text_spec!r} has no text tower; pass text=False or another text_init")
        if source.text.config.hidden_size != vision.config.hidden_size:
            raise UserError(
                f"{option}={text_spec!r} has text width {source.text.config.hidden_size}, but {name} has width "
                f"{vision.config.hidden_size}; the text tower can only be reused at equal width"
            )
        # init: the zoo's text shapes with the checkpoint's vocabulary; text_init: the checkpoint's tower as is.
        text_config = (source.text.config if text_init is not None else
                       arch.build_config(vocab_size=source.text.config.vocab_size, image_size=image_size).text_config)
        with no_init_weights():
            text_model = Tipsv2TextModel(text_config)
        _copy_tower(text_model, source.text, f"{name} text tower", text_spec)
        theirs = source.tokenizer
        if tokenizer is not None and theirs is not None and tokenizer.get_vocab() != theirs.get_vocab():
            raise UserError(f"tokenizer=... has another vocabulary than {text_spec!r}, whose text tower is reused; "
                            "pass its tokenizer or none")
        tokenizer, temperature = theirs or tokenizer, source.temperature or temperature
        metadata["text_init"] = {"spec": text_spec, "fingerprint": source.fingerprint}

    if text_model is not None and tokenizer is not None and len(tokenizer) > text_model.config.vocab_size:
        raise UserError(
            f"the tokenizer has {len(tokenizer)} tokens but the text embedding only {text_model.config.vocab_size}"
        )
    heads = ProjectionHeads(vision.config.hidden_size, teacher_width, head) if teacher_width else None
    student = Student(name, vision, text_model, heads, tokenizer=tokenizer, temperature=temperature,
                      metadata=metadata)
    if gradient_checkpointing:
        vision.activation_checkpointing_enable()
        if text_model is not None:
            text_model.activation_checkpointing_enable()
    return student


def _tipsv2_teacher(spec: str, option: str, sources: dict):
    """A TIPSv2 teacher (transformers towers) loaded by the teacher layer from any spec it reads."""
    if spec not in sources:
        teacher = load_teacher(spec)
        if not isinstance(getattr(teacher, "vision", None), Tipsv2VisionModel):
            raise UserError(f"{option}={spec!r} is a {type(teacher).__name__}, not a TIPSv2 checkpoint; "
                            "students can only start from TIPSv2 weights")
        sources[spec] = teacher
    return sources[spec]


def _copy_tower(target, source, what: str, spec: str) -> None:
    if target.config.num_attention_heads != source.config.num_attention_heads:
        raise UserError(f"init checkpoint {spec!r} has {source.config.num_attention_heads} attention heads, "
                        f"{what} has {target.config.num_attention_heads}")
    check_state_dict(target, source.state_dict(), f"init checkpoint {spec!r}", what)
    target.load_state_dict(source.state_dict())


def student_patch_size(name: str, timm_kwargs: dict | None = None, feature_stride: int | None = None) -> int:
    """The patch size (a timm student: feature stride) a student of this name has, without building it."""
    if is_timm_name(name):
        return timm_patch_size(name, timm_kwargs or {}, feature_stride)
    return get_arch(name).config.vision_config.patch_size
