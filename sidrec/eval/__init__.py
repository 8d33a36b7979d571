from sidrec.eval.metrics import popularity_ranking, rank_of_target, topk_metrics

__all__ = ["popularity_ranking", "rank_of_target", "topk_metrics"]
