"""ERNIE 4.5 VL: converter round trip, logits/greedy parity with transformers, preprocessing, chat template."""

import base64
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file, save_file

from converters.convert import convert
from converters.expected import expected_tensors
from ernie_paddle.config.text import ErnieConfig
from ernie_paddle.devkit.vl_demo import BASE_VOCAB, make_tiny_vl_checkpoint, token_ids
from ernie_paddle.errors import ErnieError
from ernie_paddle.io.checkpoint import open_checkpoint
from ernie_paddle.tokenizer.ernie_tokenizer import ErnieTokenizer
from ernie_paddle.tokenizer.image_preprocess import ImageOptions, load_image, preprocess_images
from ernie_paddle.tokenizer.vl_prompt import (
    VL_CHAT_TEMPLATE,
    VLInputs,
    build_inputs,
    encode_with_images,
    modality_types,
    user_message,
)

IMG, START, END = BASE_VOCAB, BASE_VOCAB + 1, BASE_VOCAB + 2
VID, VSTART, VEND = BASE_VOCAB + 3, BASE_VOCAB + 4, BASE_VOCAB + 5


def _image(seed, h, w, mode="RGB"):
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("vl")
    hf = make_tiny_vl_checkpoint(root / "hf")
    convert(hf, root / "paddle", quiet=True)
    convert(root / "paddle", root / "back", quiet=True)
    return {"hf": hf, "paddle": root / "paddle", "back": root / "back", "root": root}


@pytest.fixture(scope="module")
def ref_model(folders):
    from transformers import Ernie4_5_VLMoeForConditionalGeneration

    return Ernie4_5_VLMoeForConditionalGeneration.from_pretrained(folders["hf"]).eval()


@pytest.fixture(scope="module")
def runtime(folders):
    from ernie_paddle.runtime.vl import load_vl

    return load_vl(folders["paddle"], device="cpu")


@pytest.fixture(scope="module")
def ref_processor(folders):
    from transformers import AutoTokenizer, Ernie4_5_VLMoeImageProcessorPil, Ernie4_5_VLMoeProcessor

    class NoVideoProcessor(Ernie4_5_VLMoeProcessor):  # the video processor needs torchvision
        def check_argument_for_proper_class(self, *args):
            return None

    image_proc = Ernie4_5_VLMoeImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 64})
    tok = AutoTokenizer.from_pretrained(folders["hf"])
    return NoVideoProcessor(image_processor=image_proc, tokenizer=tok, video_processor=None,
                            chat_template=VL_CHAT_TEMPLATE)


def _ref_logits(model, inputs: VLInputs):
    kw = {"input_ids": torch.tensor(inputs.input_ids), "mm_token_type_ids": torch.tensor(inputs.token_types),
          "moe_mm_token_type_ids": torch.tensor(inputs.moe_types)}
    if inputs.pixel_values is not None:
        kw.update(pixel_values=torch.tensor(inputs.pixel_values), image_grid_thw=torch.tensor(inputs.image_grid_thw))
    if inputs.pixel_values_videos is not None:
        kw.update(pixel_values_videos=torch.tensor(inputs.pixel_values_videos),
                  video_grid_thw=torch.tensor(inputs.video_grid_thw))
    with torch.no_grad():
        return model(**kw).logits.numpy(), kw


def _inputs(ids, pixels=None, grid=None, videos=None, video_grid=None):
    row = np.array([ids], dtype=np.int64)
    types, moe = modality_types(row, token_ids())
    return VLInputs(row, types, moe, pixels, grid, videos, video_grid)


def _two_image_inputs():
    pixels, grid = preprocess_images([_image(1, 56, 56), _image(2, 84, 112)])
    n1, n2 = (int(np.prod(g)) // 4 for g in grid)
    ids = [1, 40, 41, START, *[IMG] * n1, END, 42, 43, 44, START, *[IMG] * n2, END, 45, 46, 47, 48]
    return _inputs(ids, pixels, grid)


def _assert_close(ours, ref):
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-4
    assert (ours.argmax(-1) == ref.argmax(-1)).all()


# ------------------------------------------------------------------------------------------- converter
def test_round_trip_is_bit_identical_and_transformers_loads_it(folders, ref_model):
    from transformers import Ernie4_5_VLMoeForConditionalGeneration

    a, b = open_checkpoint(folders["hf"]), open_checkpoint(folders["back"])
    assert sorted(a.keys()) == sorted(b.keys())
    for key in a.keys():
        assert a.get(key).dtype == b.get(key).dtype and a.get(key).tobytes() == b.get(key).tobytes(), key
    back, info = Ernie4_5_VLMoeForConditionalGeneration.from_pretrained(folders["back"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ref = ref_model.state_dict()
    assert all(torch.equal(t, ref[k]) for k, t in back.state_dict().items())


def test_paddle_layout_follows_the_vl_rules(folders):
    hf, pd = load_file(folders["hf"] / "model.safetensors"), load_file(folders["paddle"] / "model.safetensors")
    cfg = ErnieConfig.from_file(folders["paddle"])
    expected = expected_tensors(cfg)
    assert set(pd) == {k for k in expected if k != "lm_head.weight"}
    assert all(pd[k].shape == expected[k].shape for k in pd)
    layer = "layers.1.mlp"
    # VL routers are [H, E] in both layouts; the bias is [2, E]; experts 4.. are the narrower vision ones.
    assert np.array_equal(pd[f"ernie.{layer}.gate.weight"], hf[f"model.{layer}.gate.weight"])
    assert np.array_equal(pd[f"ernie.{layer}.gate.weight_1"], hf[f"model.{layer}.gate.weight_1"])
    assert pd[f"ernie.{layer}.moe_statics.e_score_correction_bias"].shape == (2, 4)
    assert pd[f"ernie.{layer}.experts.4.up_gate_proj.weight"].shape == (64, 32)
    # The vision qkv stays fused (transposed only); resampler Linears are transposed.
    assert np.array_equal(pd["vision_model.blocks.0.attn.qkv.weight"], hf["model.vision_model.blocks.0.attn.qkv.weight"].T)
    assert np.array_equal(pd["ernie.resampler_model.temporal_linear.0.weight"],
                          hf["model.resampler_model.temporal_linear.0.weight"].T)
    native = json.loads((folders["back"] / "config.json").read_text())
    assert native["model_type"] == "ernie4_5_vl_moe" and native["text_config"]["moe_intermediate_size"] == [24, 16]
    paddle_cfg = json.loads((folders["paddle"] / "config.json").read_text())
    assert paddle_cfg["moe_num_experts"] == [4, 4] and paddle_cfg["im_patch_id"] == IMG and "dtype" in paddle_cfg


def test_alternative_vision_spellings_are_accepted(folders, tmp_path):
    """Paddle ``ernie.vision_model.*`` and HF unprefixed ``vision_model.*`` convert to the canonical names."""
    pd = tmp_path / "pd"
    shutil.copytree(folders["paddle"], pd)
    tensors = load_file(pd / "model.safetensors")
    save_file({("ernie." + k if k.startswith("vision_model.") else k): v for k, v in tensors.items()},
              pd / "model.safetensors", metadata={"format": "paddle"})
    convert(pd, tmp_path / "hf", quiet=True)
    _assert_same_tensors(tmp_path / "hf", folders["hf"])
    hf = tmp_path / "hf2"
    shutil.copytree(folders["hf"], hf)
    tensors = load_file(hf / "model.safetensors")
    save_file({k.removeprefix("model.") if ".vision_model." in "." + k else k: v for k, v in tensors.items()},
              hf / "model.safetensors", metadata={"format": "pt"})
    convert(hf, tmp_path / "pd2", quiet=True)
    _assert_same_tensors(tmp_path / "pd2", folders["paddle"])


def _assert_same_tensors(a, b):
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert sorted(ta) == sorted(tb)
    assert all(np.array_equal(ta[k], tb[k]) for k in ta)


def test_vl_shape_contradiction_is_refused(folders, tmp_path):
    pd = tmp_path / "pd"
    shutil.copytree(folders["paddle"], pd)
    tensors = load_file(pd / "model.safetensors")
    tensors["ernie.layers.1.mlp.gate.weight_1"] = tensors["ernie.layers.1.mlp.gate.weight_1"].T.copy()
    save_file(tensors, pd / "model.safetensors", metadata={"format": "paddle"})
    with pytest.raises(ErnieError, match="gate.weight_1"):
        convert(pd, tmp_path / "out", quiet=True)


RELEASE_28B = {  # the flat release dialect (spec 1.2), as a Paddle config
    "architectures": ["Ernie4_5_VLMoeForConditionalGeneration"], "model_type": "ernie4_5_moe_vl", "dtype": "bfloat16",
    "hidden_size": 2560, "intermediate_size": 12288, "num_hidden_layers": 28, "num_attention_heads": 20,
    "num_key_value_heads": 4, "vocab_size": 103424, "rope_theta": 500000, "rms_norm_eps": 1e-5,
    "moe_num_experts": [64, 64], "moe_k": 6, "moe_intermediate_size": [1536, 512], "moe_num_shared_experts": 2,
    "moe_layer_start_index": [1, 1], "moe_layer_end_index": [29, 28], "moe_layer_interval": 1,
    "im_patch_id": 100295, "spatial_conv_size": 2, "temporal_conv_size": 2, "freq_allocation": 20,
    "vision_config": {"depth": 32, "embed_dim": 1280, "hidden_size": 1280, "num_heads": 16, "mlp_ratio": 4,
                      "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2, "hidden_act": "quick_gelu"}}


def test_release_config_renders_as_transformers_native():
    from transformers import Ernie4_5_VLMoeConfig

    cfg = ErnieConfig.from_dict(RELEASE_28B)
    native = Ernie4_5_VLMoeConfig(**cfg.to_dict("hf"))
    ref = Ernie4_5_VLMoeConfig()  # transformers' defaults are documented as VL-28B-A3B
    for name in ("hidden_size", "num_hidden_layers", "moe_num_experts", "moe_intermediate_size", "moe_k",
                 "mlp_layer_types", "num_key_value_heads"):
        assert getattr(native.text_config, name) == getattr(ref.text_config, name), name
    rope = native.text_config.rope_parameters
    assert rope["mrope_section"] == [22, 22, 20] and rope["rope_theta"] == ref.text_config.rope_parameters["rope_theta"]
    for name in ("depth", "hidden_size", "intermediate_size", "num_heads", "spatial_merge_size",
                 "temporal_merge_size"):
        assert getattr(native.vision_config, name) == getattr(ref.vision_config, name), name
    assert native.image_token_id == ref.image_token_id
    again = ErnieConfig.from_dict(native.to_dict())
    assert again.to_dict("paddle")["moe_num_experts"] == [64, 64] and again.head_dim == 128
    expected = expected_tensors(cfg)
    assert sum(k.endswith("e_score_correction_bias") for k in expected) == 27
    assert sum(".experts." in k and k.endswith("down_proj.weight") for k in expected) == 27 * 128
    assert expected["ernie.layers.1.mlp.experts.64.up_gate_proj.weight"].shape == (2560, 1024)
    assert expected["ernie.resampler_model.temporal_linear.0.weight"].shape == (10240, 5120)


# ------------------------------------------------------------------------------------------- parity
def test_text_only_logits_match_transformers(runtime, ref_model):
    inputs = _inputs([1, 7, 99, 300, 4, 18, 250, 77, 5])
    ref, _ = _ref_logits(ref_model, inputs)
    _assert_close(runtime.logits(inputs), ref)


def test_hf_folder_loads_to_the_same_model(folders, runtime, dense_hf):
    from ernie_paddle.runtime.vl import load_vl

    inputs = _two_image_inputs()
    assert np.array_equal(load_vl(folders["hf"], device="cpu").logits(inputs), runtime.logits(inputs))
    with pytest.raises(ErnieError, match="VL checkpoint"):
        load_vl(dense_hf, device="cpu")


def test_two_images_of_different_sizes_match_transformers(runtime, ref_model):
    inputs = _two_image_inputs()
    assert inputs.image_grid_thw.tolist() == [[1, 4, 4], [1, 6, 8]]
    ref, _ = _ref_logits(ref_model, inputs)
    _assert_close(runtime.logits(inputs), ref)


def test_video_tokens_match_transformers(runtime, ref_model):
    """Two frames merged in time: 2 x (4 x 4) patches -> 4 video tokens with temporal positions."""
    rng = np.random.default_rng(5)
    videos = rng.standard_normal((2 * 16, 588)).astype(np.float32)
    inputs = _inputs([1, 30, VSTART, *[VID] * 4, VEND, 31, 32], videos=videos,
                     video_grid=np.array([[2, 4, 4]], dtype=np.int64))
    ref, _ = _ref_logits(ref_model, inputs)
    _assert_close(runtime.logits(inputs), ref)


def test_greedy_32_tokens_match_transformers(runtime, ref_model):
    inputs = _two_image_inputs()
    ours = runtime.generate(inputs, max_new_tokens=32, stop_token_ids=[])
    _, kw = _ref_logits(ref_model, inputs)
    with torch.no_grad():
        ref = ref_model.generate(**kw, max_new_tokens=32, min_new_tokens=32, do_sample=False).numpy()
    assert ours.shape == ref.shape == (1, inputs.input_ids.shape[1] + 32)
    assert np.array_equal(ours, ref)
    assert len(set(ours[0, -32:].tolist())) > 3  # a varied continuation, not one repeated token


# ------------------------------------------------------------------------------------------- preprocessing
def test_pixels_equal_the_reference_processor():
    from transformers import Ernie4_5_VLMoeImageProcessorPil

    images = [_image(1, 70, 130), _image(2, 40, 33, "RGBA"), _image(3, 300, 200, "L"), _image(4, 20, 900)]
    ref = Ernie4_5_VLMoeImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 40})(images)
    pixels, grid = preprocess_images(images, ImageOptions(max_pixels=28 * 28 * 40))
    assert np.array_equal(grid, np.asarray(ref["image_grid_thw"]))
    assert np.abs(pixels - np.asarray(ref["pixel_values"])).max() <= 1e-6


def test_prompt_inputs_equal_the_reference_processor(folders, ref_processor, runtime):
    images = [_image(1, 56, 56), _image(2, 84, 112)]
    messages = [{"role": "user", "content": [{"type": "image", "image": images[0]},
                                             {"type": "text", "text": "What is this? And"},
                                             {"type": "image", "image": images[1]},
                                             {"type": "text", "text": " compare them."}]}]
    text = ref_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ref = ref_processor(images=images, text=[text])
    ours = runtime.inputs(messages=messages)
    assert np.array_equal(ours.input_ids, np.asarray(ref["input_ids"]))
    assert np.array_equal(ours.token_types, np.asarray(ref["mm_token_type_ids"]))
    assert np.array_equal(ours.moe_types, np.asarray(ref["moe_mm_token_type_ids"]))
    assert np.array_equal(ours.image_grid_thw, np.asarray(ref["image_grid_thw"]))
    assert np.abs(ours.pixel_values - np.asarray(ref["pixel_values"])).max() <= 1e-6


CONVERSATIONS = [
    [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}],
    [{"role": "system", "content": "Be brief."},
     {"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image_url", "image_url": {"url": "x"}},
                                  {"type": "image"}, {"type": "text", "text": "B 12"}]},
     {"role": "assistant", "content": "Two pictures."},
     {"role": "user", "content": [{"type": "video"}, {"type": "image"}, {"type": "text", "text": "and now?"}]}],
]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("extra", [{}, {"enable_thinking": True}])
def test_chat_template_with_images_renders_like_the_reference(folders, ref_processor, conversation, extra):
    ours = ErnieTokenizer.from_folder(folders["hf"]).apply_chat_template(conversation, **extra)
    ref = ref_processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True, **extra)
    assert ours == ref
    assert ours.count("<|IMAGE_PLACEHOLDER|>") == sum(p.get("type") in ("image", "image_url") for m in conversation
                                                      if isinstance(m["content"], list) for p in m["content"])


def test_image_sources_and_errors(tmp_path, runtime):
    img = _image(7, 30, 50)
    img.save(tmp_path / "a.png")
    url = "data:image/png;base64," + base64.b64encode((tmp_path / "a.png").read_bytes()).decode()
    assert np.array_equal(np.asarray(load_image(url)), np.asarray(load_image(tmp_path / "a.png")))
    with pytest.raises(ErnieError, match="network"):
        load_image("https://example.com/a.png")
    with pytest.raises(ErnieError, match="not an image"):
        load_image(b"not a png")
    with pytest.raises(ErnieError, match="0 image placeholder"):
        encode_with_images(runtime.tokenizer, runtime.config, "no placeholder here", [img])
    one = build_inputs(runtime.tokenizer, runtime.config, user_message("hi", [url]), runtime.image_options)
    assert one.image_grid_thw.tolist() == [[1, 4, 6]] and (one.token_types == 1).sum() == 6  # 30x50 -> 56x84


def test_generate_with_images_prints_the_greedy_answer(folders, runtime, tmp_path):
    from click.testing import CliRunner

    from ernie_paddle.cli.generate_cmd import generate as generate_cmd

    _image(1, 56, 56).save(tmp_path / "a.png")
    _image(2, 84, 112).save(tmp_path / "b.png")
    args = [str(folders["paddle"]), "--image", str(tmp_path / "a.png"), "--image", str(tmp_path / "b.png"),
            "--prompt", "Compare them.", "--max-new-tokens", "8", "--stop-ids", "", "--device", "cpu"]
    result = CliRunner().invoke(generate_cmd, args)
    assert result.exit_code == 0, result.output
    inputs = runtime.inputs("Compare them.", [tmp_path / "a.png", tmp_path / "b.png"])
    assert inputs.image_grid_thw.tolist() == [[1, 4, 4], [1, 6, 8]]
    new = runtime.generate(inputs, max_new_tokens=8, stop_token_ids=[])[0, inputs.input_ids.shape[1]:]
    assert result.output == runtime.tokenizer.decode(new.tolist(), skip_special_tokens=True) + "\n"
    assert len(new) == 8
    bad = CliRunner().invoke(generate_cmd, [str(folders["paddle"]), "--image", "https://x/a.png", "--prompt", "?"])
    assert isinstance(bad.exception, ErnieError) and "network" in str(bad.exception)
