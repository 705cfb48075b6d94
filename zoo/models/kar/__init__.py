"""KAR (Xi et al., Towards Open-World Recommendation with Knowledge Augmentation from Large Language Models, arXiv
2306.10933): LLM-written knowledge (``knowledge``: the ``kar_knowledge`` and ``kar_vectors`` stages) injected into
the CTR backbones of ``zoo.models.ctr_backbones`` through the adaptors of ``zoo.modules.experts``."""

from zoo.models.kar import knowledge  # noqa: F401  (stage registration)
