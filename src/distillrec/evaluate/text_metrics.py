"""Explanation quality as POD reports it: BLEU-1/4 (sacrebleu) and ROUGE-1/2/L F1 (rouge-score), x100.

Both libraries are imported on first use: rouge-score pulls in nltk, a second of start-up that
every evaluation without explanations would pay.
"""

from __future__ import annotations


def bleu(generated: list[str], references: list[str], order: int) -> float:
    """Corpus BLEU with n-grams up to `order` (13a tokenisation, no smoothing), 0..100."""
    from sacrebleu.metrics import BLEU

    return BLEU(max_ngram_order=order, smooth_method="none").corpus_score(generated, [references]).score


def rouge_f1(generated: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over pairs, 0..100."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for hyp, ref in zip(generated, references):
        for name, score in scorer.score(ref, hyp).items():
            totals[name] += score.fmeasure
    return {name: 100 * value / max(len(generated), 1) for name, value in totals.items()}


def explanation_metrics(generated: list[str], references: list[str]) -> dict[str, float]:
    if len(generated) != len(references) or not generated:
        raise ValueError(f"need equal, non-empty lists; got {len(generated)} generated, {len(references)} references")
    return {"bleu1": bleu(generated, references, 1), "bleu4": bleu(generated, references, 4),
            **rouge_f1(generated, references), "n": len(generated)}
