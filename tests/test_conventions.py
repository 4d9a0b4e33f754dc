"""The conventions table of docs/contrastive.md ("Conventions of the peer packages"), row by
row: each peer's loss written here from its documented definition (the peers are not
installed), in float64, against the pyhypersphere call the table maps it to.

Peers: lightly (NTXentLoss, with and without memory bank), pytorch-metric-learning
(NTXentLoss with labels), open_clip (ClipLoss), info-nce-pytorch (InfoNCE, in-batch and
unpaired negatives) and solo-learn (simclr_loss_func, mocov2plus_loss_func).
"""

import pytest
import torch
import torch.nn.functional as F

from pyhypersphere import clip_loss, info_nce_loss, nt_xent_loss

N, D = 7, 5


def raw(n=N, d=D, seed=0, scale=3.0):
    """Unnormalized features (norms around `scale`): where the conventions differ."""
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(n, d, generator=g, dtype=torch.float64)


def unit(z):
    return F.normalize(z, dim=1)


# ----------------------------------------------------------------- the peers' formulas


def lightly_ntxent(out0, out1, temperature=0.5, memory_bank=None):
    """lightly.loss.NTXentLoss: normalizes both outputs; without a memory bank the logits of
    each of the 2N views against the other 2N - 1 (same-view self pairs removed), target its
    pair; with one (stored [C, K], normalized), out0's N rows against [out1_i, bank], target
    0.  nn.CrossEntropyLoss(reduction="mean")."""
    out0, out1 = unit(out0), unit(out1)
    if memory_bank is not None:
        pos = (out0 * out1).sum(1, keepdim=True)
        logits = torch.cat([pos, out0 @ memory_bank], 1) / temperature
        return F.cross_entropy(logits, torch.zeros(out0.shape[0], dtype=torch.long))
    n = out0.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    l00 = (out0 @ out0.T / temperature)[off].view(n, -1)
    l11 = (out1 @ out1.T / temperature)[off].view(n, -1)
    logits = torch.cat([torch.cat([out0 @ out1.T / temperature, l00], 1), torch.cat([out1 @ out0.T / temperature, l11], 1)])
    return F.cross_entropy(logits, torch.arange(n).repeat(2))


def pml_ntxent(embeddings, labels, temperature=0.07):
    """pytorch_metric_learning.losses.NTXentLoss with its default CosineSimilarity: for every
    ordered positive pair (a, p) (same label, a != p), -log(e^{s_ap/T} / (e^{s_ap/T} + sum
    over n with another label of e^{s_an/T})); MeanReducer over the positive pairs."""
    s = unit(embeddings) @ unit(embeddings).T / temperature
    same = labels[:, None] == labels[None, :]
    losses = []
    for a in range(len(labels)):
        negatives = s[a][~same[a]]
        for p in torch.nonzero(same[a]).flatten().tolist():
            if p != a:
                losses.append(torch.logsumexp(torch.cat([s[a, p : p + 1], negatives]), 0) - s[a, p])
    return torch.stack(losses).mean()


def open_clip_loss(image_features, text_features, logit_scale):
    """open_clip.loss.ClipLoss (one process): logits = logit_scale * image @ text^T (features as
    the model gives them, normalized by encode_image/encode_text, not by the loss); the mean
    of the cross entropies over rows and over columns, target the diagonal."""
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(image_features.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def info_nce_pytorch(query, positive_key, negative_keys=None, temperature=0.1):
    """info_nce.info_nce (info-nce-pytorch), negative_mode="unpaired": all inputs normalized;
    without negatives the logits query @ positive_key^T (the other keys are the negatives),
    target the diagonal; with [M, D] negatives [<q_i, k_i>, q_i @ negatives^T], target 0."""
    query, positive_key = unit(query), unit(positive_key)
    if negative_keys is None:
        logits = query @ positive_key.T
        labels = torch.arange(query.shape[0])
    else:
        negative_keys = unit(negative_keys)
        pos = (query * positive_key).sum(1, keepdim=True)
        logits = torch.cat([pos, query @ negative_keys.T], 1)
        labels = torch.zeros(query.shape[0], dtype=torch.long)
    return F.cross_entropy(logits / temperature, labels)


def solo_simclr(z, indexes, temperature=0.1):
    """solo.losses.simclr_loss_func: z normalized; sim = exp(z z^T / T); for each row the
    positives (same index, not itself) and negatives (another index);
    -mean(log(pos / (pos + neg)))."""
    z = unit(z)
    sim = torch.exp(z @ z.T / temperature)
    pos_mask = indexes[:, None] == indexes[None, :]
    pos_mask.fill_diagonal_(False)
    neg_mask = indexes[:, None] != indexes[None, :]
    pos = (sim * pos_mask).sum(1)
    neg = (sim * neg_mask).sum(1)
    return -torch.log(pos / (pos + neg)).mean()


def solo_mocov2plus(query, key, queue, temperature=0.1):
    """solo.losses.mocov2plus_loss_func: no normalization inside (the method normalizes q and
    k, and the queue holds normalized keys, stored [C, K]); logits [<q_i, k_i>, q_i @ queue]
    / T, target 0."""
    pos = (query * key).sum(1, keepdim=True)
    logits = torch.cat([pos, query @ queue], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(query.shape[0], dtype=torch.long))


def close(got, want):
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------- the table's mappings


def test_lightly_ntxent_is_nt_xent_on_normalized_inputs():
    x, y = raw(seed=1), raw(seed=2)
    close(nt_xent_loss(unit(x), unit(y), 0.5), lightly_ntxent(x, y, 0.5))
    # lightly normalizes inside, nt_xent_loss does not: raw inputs give other values.
    assert abs(nt_xent_loss(x, y, 0.5).item() - lightly_ntxent(x, y, 0.5).item()) > 1.0


def test_lightly_memory_bank_is_info_nce_with_a_queue_and_no_in_batch_negatives():
    x, y = raw(seed=3), raw(seed=4)
    bank = unit(raw(n=30, seed=5)).T  # lightly keeps it [C, K], normalized
    close(info_nce_loss(unit(x), unit(y), 0.2, queue=bank.T, in_batch=False), lightly_ntxent(x, y, 0.2, bank))


def test_pytorch_metric_learning_ntxent_with_pair_labels_is_nt_xent():
    x, y = raw(seed=6), raw(seed=7)
    labels = torch.arange(N).repeat(2)  # the two views of sample i share label i
    close(nt_xent_loss(unit(x), unit(y), 0.07), pml_ntxent(torch.cat([x, y]), labels, 0.07))


def test_open_clip_loss_is_clip_loss_with_tau_the_inverse_logit_scale():
    image, text = unit(raw(seed=8)), unit(raw(seed=9))
    logit_scale = torch.tensor(1 / 0.07, dtype=torch.float64)  # open_clip: model.logit_scale.exp()
    close(clip_loss(image, text, 1 / logit_scale.item()), open_clip_loss(image, text, logit_scale))
    # Features as given on both sides: unnormalized ones agree too.
    close(clip_loss(raw(seed=8), raw(seed=9), 0.5), open_clip_loss(raw(seed=8), raw(seed=9), 2.0))


def test_info_nce_pytorch_in_batch_and_unpaired_negatives():
    q, k, negatives = raw(seed=10), raw(seed=11), raw(n=25, seed=12)
    close(info_nce_loss(unit(q), unit(k), 0.1), info_nce_pytorch(q, k, temperature=0.1))
    close(
        info_nce_loss(unit(q), unit(k), 0.1, queue=unit(negatives), in_batch=False),
        info_nce_pytorch(q, k, negatives, temperature=0.1),
    )


def test_solo_learn_simclr_is_nt_xent_on_normalized_inputs():
    z1, z2 = raw(seed=13), raw(seed=14)
    indexes = torch.arange(N).repeat(2)
    close(nt_xent_loss(unit(z1), unit(z2), 0.1), solo_simclr(torch.cat([z1, z2]), indexes, 0.1))


def test_solo_learn_mocov2plus_is_info_nce_with_a_queue():
    q, k = unit(raw(seed=15)), unit(raw(seed=16))
    queue = unit(raw(n=40, seed=17)).T  # solo-learn keeps it [C, K]
    close(info_nce_loss(q, k, 0.2, queue=queue.T, in_batch=False), solo_mocov2plus(q, k, queue, 0.2))


@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_the_peers_agree_with_each_other_where_the_table_says_so(tau):
    # The same SimCLR objective three ways, on raw inputs (all three normalize inside).
    x, y = raw(seed=18), raw(seed=19)
    labels = torch.arange(N).repeat(2)
    close(lightly_ntxent(x, y, tau), pml_ntxent(torch.cat([x, y]), labels, tau))
    close(lightly_ntxent(x, y, tau), solo_simclr(torch.cat([x, y]), labels, tau))
