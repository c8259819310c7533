"""A faster evaluation of SAM's prompt encoder and mask decoder, with the same weights.

It computes what ``MaskDecoder(...)`` computes, rearranged (results agree to float rounding, and
so do gradients: ``tests/test_fast_paths.py`` checks masks, IoU and gradients against SAM's own):

* Per image, once: the image tokens with the no-mask embedding, the dense positional encoding,
  and everything of the first layer that depends on the image alone (the token-to-image keys
  and values, the image-to-token queries).
* Attention projections on the 4096 image tokens are folded into the few prompt tokens:
  ``softmax(q Wk (K + P)^T) (K Wv^T + bv) = (softmax(...) K) Wv^T + bv`` since attention rows
  sum to 1, and ``q Wk bk`` is constant along the softmax so it drops out. Likewise the
  image-to-token queries and output projection fold into the tokens' keys and values.
* The stride-2 transposed convolutions of the upscaler are per-pixel matrix products applied in
  the tokens' (N, C) layout, so nothing is transposed back to (C, H, W) until the final mask.
* The final token-to-image attention is computed for the output tokens only (the prompt tokens'
  results are never read).
* Hypernetwork weights are computed for the masks asked for only (mask 0, or masks 1-3), and with
  one mask asked for, or the best of three by predicted IoU, only that mask is upscaled through the
  hypernetwork product.

Shapes: ``B`` prompts of one image, ``T`` tokens (5 output tokens + prompt tokens), ``N`` = 64*64
image tokens, ``C`` = 256 channels, ``H`` = 8 heads of ``D`` = 16 (internal dim 128).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock

__all__ = ["FastDecoder", "ImageContext"]

#: Image tokens per step of the upscaler: small enough for its intermediates to stay in the CPU cache.
UPSCALE_CHUNK = 1024


@dataclass
class ImageContext:
    """Per-image tensors shared by every prompt of the image (and the weights rearranged once).

    ``I`` is 1 (one image, any number of prompts) or the number of prompts (prompt ``b`` of image ``b``).
    """

    keys: torch.Tensor  # (I, N, C) image tokens + no-mask embedding, contiguous
    pos: torch.Tensor  # (1, N, C) dense positional encoding
    k1: torch.Tensor  # (I, H, N, D) first layer, token-to-image keys, scaled by 1/sqrt(D)
    v1: torch.Tensor  # (I, H, N, D) first layer, token-to-image values
    q1: torch.Tensor  # (I, H*D, N) first layer, image-to-token queries (transposed), scaled by 1/sqrt(D)
    size: tuple[int, int]  # (h, w) of the embedding
    folded: dict  # per attention module: its projections rearranged for folding


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., L, H*D) -> (..., H, L, D)"""
    *lead, length, dim = x.shape
    return x.reshape(*lead, length, heads, dim // heads).transpose(-3, -2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(..., H, L, D) -> (..., L, H*D)"""
    *lead, heads, length, dim = x.shape
    return x.transpose(-3, -2).reshape(*lead, length, heads * dim)


def _fold(attn: Attention, heads: int) -> dict:
    """An attention module's projections split per head, the 1/sqrt(D) scale folded into q or k."""
    d = attn.internal_dim // heads
    scale = 1.0 / math.sqrt(d)
    return {
        "wk": attn.k_proj.weight.reshape(heads, d, -1) * scale,  # (H, D, C)
        "wq": attn.q_proj.weight.reshape(heads, d, -1) * scale,  # (H, D, C)
        "bq": attn.q_proj.bias.reshape(heads, d, 1) * scale,  # (H, D, 1)
        "wv_t": attn.v_proj.weight.reshape(heads, d, -1).transpose(1, 2),  # (H, C, D)
        "bv": attn.v_proj.bias.reshape(heads, 1, d),
        "wo": attn.out_proj.weight.reshape(-1, heads, d).permute(1, 2, 0).unsqueeze(0),  # (1, H, D, C)
        "bo": attn.out_proj.bias / heads,  # (C,): a share per head, folded into each head's values
    }


class FastDecoder:
    """The decoder over the weights of a ``PromptEncoder`` and ``MaskDecoder``.

    Weights are read when an image is prepared, so a context follows the weights of its time.
    """

    def __init__(self, prompt_encoder: PromptEncoder, mask_decoder: MaskDecoder):
        self.pe = prompt_encoder
        self.md = mask_decoder
        self.heads = mask_decoder.transformer.num_heads
        self._dense_pe: dict[torch.device, torch.Tensor] = {}

    def dense_pe(self) -> torch.Tensor:
        """(1, N, C) positional encoding of the embedding grid (a buffer of the weights), once per
        device; :meth:`forget` drops it when the weights change."""
        device = self.pe.no_mask_embed.weight.device
        if device not in self._dense_pe:
            self._dense_pe[device] = self.pe.get_dense_pe().flatten(2).transpose(1, 2).contiguous()
        return self._dense_pe[device]

    def forget(self) -> None:
        """Drop what was computed from the weights (after loading others)."""
        self._dense_pe.clear()

    def prepare(self, embedding: torch.Tensor) -> ImageContext:
        """Per-image work for (I, C, h, w) embeddings: one image whose prompts share it (I = 1), or
        I images of one prompt each (training)."""
        _, c, h, w = embedding.shape
        keys = embedding.flatten(2).transpose(1, 2) + self.pe.no_mask_embed.weight.reshape(1, 1, c)
        pos = self.dense_pe()
        tr = self.md.transformer
        first = tr.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        scale = 1.0 / math.sqrt(t2i.internal_dim // self.heads)
        kin = keys + pos
        k1 = _heads(t2i.k_proj(kin) * scale, self.heads)
        v1 = _heads(t2i.v_proj(keys), self.heads)
        q1 = (i2t.q_proj(kin) * scale).transpose(1, 2).contiguous()
        modules = [i2t] + [a for layer in tr.layers[1:] for a in (layer.cross_attn_token_to_image,
                                                                  layer.cross_attn_image_to_token)]
        folded = {id(a): _fold(a, self.heads) for a in modules + [tr.final_attn_token_to_image]}
        conv1, _, _, conv2, _ = self.md.output_upscaling
        folded["w1"] = conv1.weight.permute(0, 2, 3, 1).reshape(c, -1)  # (C, a*b*C1) for output offset (a, b)
        folded["w2"] = conv2.weight.permute(0, 2, 3, 1).reshape(conv2.in_channels, -1)
        folded["b1"], folded["b2"] = conv1.bias.repeat(4), conv2.bias.repeat(4)  # one per output offset
        # Stored (N, C)-contiguous: in the embedding's (C, h, w) order, every prompt read them with
        # a stride of N (the first image-to-token attention's residual), a fifth of the transformer's time.
        return ImageContext(keys.contiguous(), pos, k1, v1, q1, (h, w), folded)

    def with_mask(self, ctx: ImageContext, mask_input: torch.Tensor) -> ImageContext:
        """The context of the same image with a mask prompt: ``mask_input`` (1, 1, 4h, 4w) logits
        (a previous output's low-resolution mask), whose embedding replaces the no-mask embedding.

        The mask embedding ends in a 1x1 convolution, ``W3 g + b3`` over ``g`` (1, 16, h, w), so its
        share of the first layer's image projections is ``(W W3) g``: 16 channels in place of 256,
        added to the context's (the image-side work is not redone).
        """
        downscale = self.pe.mask_downscaling
        g = downscale[:-1](mask_input).flatten(2).transpose(1, 2)[0]  # (N, 16)
        last = downscale[-1]
        w3 = last.weight.flatten(1)  # (C, 16)
        shift = last.bias - self.pe.no_mask_embed.weight[0]  # (C,): what replaces the no-mask embedding

        def projected(linear: torch.nn.Linear) -> torch.Tensor:  # linear(keys') - linear(keys), (N, out)
            return torch.addmm(linear.weight @ shift, g, (linear.weight @ w3).t())

        first = self.md.transformer.layers[0]
        t2i, i2t = first.cross_attn_token_to_image, first.cross_attn_image_to_token
        scale = 1.0 / math.sqrt(t2i.internal_dim // self.heads)
        keys = ctx.keys + torch.addmm(shift, g, w3.t())
        k1 = ctx.k1 + _heads(projected(t2i.k_proj) * scale, self.heads)
        v1 = ctx.v1 + _heads(projected(t2i.v_proj), self.heads)
        q1 = ctx.q1 + (projected(i2t.q_proj) * scale).t()
        return ImageContext(keys.contiguous(), ctx.pos, k1, v1, q1.contiguous(), ctx.size, ctx.folded)

    # -- attention pieces

    def _token_to_image(self, attn: Attention, f: dict, q: torch.Tensor, keys: torch.Tensor,
                        kin: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, C) attend to image ``keys`` (B, N, C) with key input ``kin`` = keys + pos."""
        qh = _heads(attn.q_proj(q), self.heads)  # (B, H, T, D)
        qk = (qh @ f["wk"]).flatten(1, 2)  # (B, H*T, C): the key projection folded into the queries
        probs = (qk @ kin.transpose(1, 2)).softmax(dim=-1)  # (B, H*T, N)
        mixed = (probs @ keys).unflatten(1, (self.heads, -1))  # (B, H, T, C)
        vh = mixed @ f["wv_t"] + f["bv"]  # (B, H, T, D): the value projection after the mixing
        return attn.out_proj(_merge(vh))

    def _image_to_token(self, attn: Attention, f: dict, norm: torch.nn.LayerNorm, keys: torch.Tensor,
                        kin: torch.Tensor | None, q_t: torch.Tensor | None, pos: torch.Tensor,
                        tokens_k: torch.Tensor, tokens_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens attend to the prompt tokens; returns the new image tokens
        ``norm(keys + update)`` (B, N, C) and the next key input (those + ``pos``).

        Queries are either precomputed (``q_t`` (H*D, N) or (B, H*D, N), first layer) or folded from the image key
        input ``kin`` (B, N, C). Scores are laid out tokens-major, (B, H*T, N), so that the softmax
        over each head's T tokens runs along contiguous rows of N; since each head's attention
        weights sum to 1, the output bias is folded into the values.
        """
        kh = _heads(attn.k_proj(tokens_k), self.heads)  # (B, H, T, D)
        vh = _heads(attn.v_proj(tokens_v), self.heads)  # (B, H, T, D)
        b, h, t, d = kh.shape
        if q_t is not None:  # block-diagonal keys: one GEMM over all heads
            eye = torch.eye(h, dtype=kh.dtype, device=kh.device)
            block = torch.einsum("bhtd,hg->bhtgd", kh, eye).reshape(b, h * t, h * d)
            scores = block @ q_t  # (B, H*T, N)
        else:
            fold = (kh @ f["wq"]).flatten(1, 2)  # (B, H*T, C): the query projection folded into the keys
            bias = (kh @ f["bq"]).flatten(1, 2)  # (B, H*T, 1)
            scores = torch.baddbmm(bias, fold, kin.transpose(1, 2))
        probs = scores.unflatten(1, (h, t)).softmax(dim=2).flatten(1, 2)  # over each head's T tokens
        vo = (vh @ f["wo"]).flatten(1, 2) + f["bo"]  # (B, H*T, C): output projection and bias folded in
        updated = torch.baddbmm(keys.expand(b, -1, -1), probs.transpose(1, 2), vo)
        new_keys = F.layer_norm(updated, (keys.shape[-1],), norm.weight, norm.bias, norm.eps)
        return new_keys, new_keys + pos

    def _block(self, layer: TwoWayAttentionBlock, queries, query_pe, keys, kin, ctx: ImageContext, first: bool):
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)
        q = queries + query_pe
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        if first:  # the image side was computed once in prepare()
            qh = _heads(t2i.q_proj(q), self.heads)
            probs = (qh @ ctx.k1.transpose(-1, -2)).softmax(dim=-1)
            queries = queries + t2i.out_proj(_merge(probs @ ctx.v1))
        else:
            queries = queries + self._token_to_image(t2i, ctx.folded[id(t2i)], q, keys, kin)
        queries = layer.norm2(queries)
        queries = layer.norm3(queries + layer.mlp(queries))
        q = queries + query_pe
        q_t = (ctx.q1[0] if len(ctx.q1) == 1 else ctx.q1) if first else None  # one image: a single GEMM
        keys, kin = self._image_to_token(i2t, ctx.folded[id(i2t)], layer.norm4, keys, kin, q_t, ctx.pos, q, queries)
        return queries, keys, kin

    # -- public

    def decode(self, ctx: ImageContext, points, boxes, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-resolution logits (B, 1, 4h, 4w) of the chosen mask and its predicted IoU (B, 1).

        The chosen mask is mask 0 without ``multimask``, else the best of masks 1-3 by predicted IoU.
        """
        sparse, _ = self.pe(points=points, boxes=boxes, masks=None)
        return self.decode_tokens(ctx, sparse, multimask)

    def decode_all(self, ctx: ImageContext, points, boxes, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Every mask as SAM's ``MaskDecoder`` returns them: logits (B, K, 4h, 4w) and predicted IoU
        (B, K), K = 3 (masks 1-3) with ``multimask`` else 1 (mask 0). Differentiable (training)."""
        sparse, _ = self.pe(points=points, boxes=boxes, masks=None)
        picked = self._picked(multimask)
        keys, iou, hyper = self._transformer(ctx, sparse, picked)
        return self._upscale(keys, hyper, ctx), iou[:, picked]

    def decode_tokens(self, ctx: ImageContext, sparse: torch.Tensor, multimask: bool):
        """:meth:`decode` from the prompt encoder's sparse tokens (B, P, C)."""
        picked = self._picked(multimask)
        keys, iou, hyper = self._transformer(ctx, sparse, picked)
        b = sparse.shape[0]
        rows = torch.arange(b, device=iou.device)
        choice = iou[:, picked].argmax(dim=1) if multimask else torch.zeros(b, dtype=torch.long, device=iou.device)
        return self._upscale(keys, hyper[rows, choice][:, None], ctx), iou[rows, choice + picked[0]][:, None]

    def _picked(self, multimask: bool) -> list[int]:
        """The masks SAM returns: 1-3 with ``multimask``, else mask 0."""
        return list(range(1, 1 + self.md.num_multimask_outputs)) if multimask else [0]

    def _transformer(self, ctx: ImageContext, sparse: torch.Tensor, picked: list[int]):
        """The two-way transformer and heads: image tokens (B, N, C), predicted IoU of every mask
        (B, 4) and the hypernetwork weights (B, K, C/8) of the K ``picked`` masks only."""
        md, tr = self.md, self.md.transformer
        b = sparse.shape[0]
        out_tokens = torch.cat([md.iou_token.weight, md.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        queries, keys, kin = tokens, ctx.keys, None
        for i, layer in enumerate(tr.layers):
            queries, keys, kin = self._block(layer, queries, tokens, keys, kin, ctx, first=i == 0)
        # Only the output tokens are read after the final attention, and each token attends on its own.
        final, n_out = tr.final_attn_token_to_image, 1 + md.num_mask_tokens
        out = queries[:, :n_out]
        update = self._token_to_image(final, ctx.folded[id(final)], out + tokens[:, :n_out], keys, kin)
        out = tr.norm_final_attn(out + update)
        iou = md.iou_prediction_head(out[:, 0])  # (B, 4)
        mask_tokens = out[:, 1:]  # (B, 4, C)
        hyper = torch.stack([md.output_hypernetworks_mlps[i](mask_tokens[:, i]) for i in picked], dim=1)
        return keys, iou, hyper

    def _upscale(self, keys: torch.Tensor, hyper: torch.Tensor, ctx: ImageContext, chunk: int = UPSCALE_CHUNK) -> torch.Tensor:
        """SAM's upscaler and hypernetwork product for K masks per prompt, in the (N, C) layout.

        ``keys`` (B, N, C), ``hyper`` (B, K, C/8) -> logits (B, K, 4h, 4w). Image tokens are processed
        ``chunk`` at a time so that the large intermediates stay in the CPU cache.
        """
        conv1, norm, act1, conv2, act2 = self.md.output_upscaling
        b, n, _ = keys.shape
        k_masks = hyper.shape[1]
        c1, c2 = conv1.out_channels, conv2.out_channels
        pieces = []
        for start in range(0, n, chunk):
            k = keys[:, start:start + chunk]
            m = k.shape[1]
            x = torch.addmm(ctx.folded["b1"], k.reshape(b * m, -1), ctx.folded["w1"]).reshape(b * m, 4, c1)
            x = act1(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
            x = act2(torch.addmm(ctx.folded["b2"], x.reshape(-1, c1), ctx.folded["w2"]))  # (B*m*ab, a2b2*C2)
            pieces.append((x.reshape(b, m * 16, c2) @ hyper.transpose(1, 2)).reshape(b, m, 16, k_masks))
        h, w = ctx.size
        # (B, i, j, a, b, a2, b2, K): pixel (4i+2a+a2, 4j+2b+b2) of mask K
        masks = torch.cat(pieces, dim=1).reshape(b, h, w, 2, 2, 2, 2, k_masks)
        return masks.permute(0, 7, 1, 3, 5, 2, 4, 6).reshape(b, k_masks, 4 * h, 4 * w)
