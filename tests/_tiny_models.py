"""Tiny, randomly initialised Grounding DINO and SAM 2 folders, built offline at test time.

They run the real transformers code paths (processor -> model -> post-processing) in
milliseconds. They are NOT pretrained models and their outputs mean nothing; folders are
named ``tiny-random-*`` so nothing downstream can mistake them for real weights. Built at
test time (not checked in) because saved folders differ between transformers 4.x and 5.x.

Traps handled here (facts.md): in transformers 5.x the BERT tokenizer must be built from
a vocab **dict** (a vocab file is silently ignored -> all [UNK]); Grounding DINO
hard-codes the special ids 101/102/1012/1029 ([CLS], [SEP], '.', '?'), so the vocab
follows BERT's layout; ``decoder_layers >= 2``; in SAM2's Hiera a global-attention block
must not be the first block of a pooled stage.
"""

from __future__ import annotations

from pathlib import Path

# Every word the tests' prompts use (BERT lower-cases; one token per word).
WORDS = ("car", "truck", "bus", "pedestrian", "person", "bicycle", "bike", "motorcycle", "traffic", "light",
         "sign", "train", "rider", "billboard", "building", "tree")
_SPECIAL = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}


def bert_vocab() -> dict[str, int]:
    """BERT-layout vocab: specials at their real ids, fillers up to 1029, then WORDS."""
    toks = [_SPECIAL.get(i, f"[unused{i}]") for i in range(1030)] + list(WORDS)
    return {t: i for i, t in enumerate(toks)}


def build_tiny_gdino(out: Path, seed: int = 0, num_queries: int = 30) -> Path:
    """Save a tiny random GroundingDinoForObjectDetection + processor under ``out``."""
    import torch
    from transformers import (BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    torch.manual_seed(seed)
    vocab = bert_vocab()
    tok = BertTokenizer(vocab=vocab, do_lower_case=True)
    swin = SwinConfig(image_size=224, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                      window_size=7, out_indices=[2, 3, 4])
    bert = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=32, max_position_embeddings=64)
    cfg = GroundingDinoConfig(backbone_config=swin, text_config=bert, d_model=32, encoder_layers=1, decoder_layers=2,
                              encoder_ffn_dim=32, decoder_ffn_dim=32, encoder_attention_heads=2,
                              decoder_attention_heads=2, num_queries=num_queries, max_text_len=32)
    model = GroundingDinoForObjectDetection(cfg).eval()
    proc = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(
        size={"shortest_edge": 128, "longest_edge": 224}), tokenizer=tok)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def build_tiny_sam2(out: Path, seed: int = 0, size: int = 128) -> Path:
    """Save a tiny random Sam2Model + Sam2Processor (input ``size`` px square) under ``out``."""
    import torch
    from transformers import (Sam2Config, Sam2HieraDetConfig, Sam2ImageProcessor, Sam2MaskDecoderConfig, Sam2Model,
                              Sam2Processor, Sam2PromptEncoderConfig, Sam2VisionConfig)

    torch.manual_seed(seed)
    s = size
    # blocks 0 | 1 | 2,3 | 4 per stage; the global block (3) is not the first of its pooled stage.
    hiera = Sam2HieraDetConfig(hidden_size=8, num_attention_heads=1, image_size=[s, s], blocks_per_stage=[1, 1, 2, 1],
                               embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 1, 1],
                               window_size_per_stage=[4, 4, 4, 4], global_attention_blocks=[3],
                               window_positional_embedding_background_size=[2, 2])
    vision = Sam2VisionConfig(backbone_config=hiera, backbone_channel_list=[64, 32, 16, 8],
                              backbone_feature_sizes=[[s // 4, s // 4], [s // 8, s // 8], [s // 16, s // 16]],
                              fpn_hidden_size=32)
    cfg = Sam2Config(vision_config=vision,
                     prompt_encoder_config=Sam2PromptEncoderConfig(hidden_size=32, image_size=s, patch_size=16),
                     mask_decoder_config=Sam2MaskDecoderConfig(hidden_size=32, mlp_dim=32, num_attention_heads=2,
                                                               iou_head_hidden_dim=32))
    model = Sam2Model(cfg).eval()
    proc = Sam2Processor(image_processor=Sam2ImageProcessor(size={"height": s, "width": s}))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def build_tiny_sam2_hub_layout(out: Path, seed: int = 0, size: int = 128) -> Path:
    """Like the hub's facebook/sam2.1-hiera-tiny: a ``sam2_video`` checkpoint + Sam2VideoProcessor.

    The image path (Sam2Model) must load its vision/prompt/mask-decoder weights from it.
    """
    import torch
    from transformers import (Sam2Config, Sam2VideoConfig, Sam2VideoModel, Sam2VideoProcessor,
                              Sam2VideoVideoProcessor)
    from transformers import Sam2ImageProcessor

    base = build_tiny_sam2(out.with_name(out.name + "-base"), seed, size)
    c = Sam2Config.from_pretrained(base)
    torch.manual_seed(seed)
    vc = Sam2VideoConfig(vision_config=c.vision_config.to_dict(), prompt_encoder_config=c.prompt_encoder_config.to_dict(),
                         mask_decoder_config=c.mask_decoder_config.to_dict(), image_size=size,
                         memory_attention_hidden_size=32, memory_attention_num_layers=1,
                         memory_attention_feed_forward_hidden_size=32, memory_encoder_hidden_size=32,
                         memory_encoder_output_channels=16, mask_downsampler_embed_dim=32, memory_fuser_embed_dim=32)
    model = Sam2VideoModel(vc).eval()
    proc = Sam2VideoProcessor(image_processor=Sam2ImageProcessor(size={"height": size, "width": size}),
                              video_processor=Sam2VideoVideoProcessor(size={"height": size, "width": size}))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def build_tiny_yolo(out: Path, seed: int = 0) -> Path:
    """A randomly initialised width-0.125 YOLOv8 with the 10 BDD class names, saved as a .pt."""
    import torch
    from ultralytics import YOLO

    from bdd_engine.bdd import CLASSES

    torch.manual_seed(seed)
    model = YOLO(str(Path(__file__).resolve().parent.parent / "bdd_engine" / "models" / "yolov8n-w0125.yaml"))
    model.model.names = dict(enumerate(CLASSES))
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(out))
    return out
