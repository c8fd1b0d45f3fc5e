"""Prompt variations: programmatic families, template families (the one type and file format, jailbreak families
included), an LLM paraphraser, the similarity filter, shipped base-prompt sets, the one cluster builder (used by
``coherentize augment`` and ``coherentize run``) and the resumable pipeline behind ``coherentize augment``.

    from coherentize.variations import augment, families_by_name, load_prompt_set, vary
    vary("How do I boil an egg?", families_by_name(["wrapper", "opinion_cue"]), seed=0)   # -> [Variation, ...]

Built-in families: name_swap, reorder, synonym, formatting, typos, register, wrapper, persona, system_prompt,
opinion_cue, roleplay, cross_context (the prompt after a conversation context, variations/contexts.py); LLM
rewrites are tagged ``paraphrase``. Files: families.py (rule families), lexicons.py
(their word lists, read from data/lexicons/), templates.py (TemplateFamily, the {prompt} slot, the one loader
of template files: built-in, organism, jailbreak (project, easyjailbreak) and users'), paraphrase.py (local and server back ends), filter.py
(embedding filter), prompt_sets.py (prompt files, shipped sets), build.py (the one cluster builder, harmful anchors
and the pair filter), pipeline.py (the resumable augment run).
"""

from coherentize.variations.build import build_clusters
from coherentize.variations.families import (
    BUILTIN_FAMILIES, Family, RuleFamily, TemplateFamily, apply_family, load_template_families, vary,
)
from coherentize.variations.filter import FilterConfig, filter_variations, load_embedder, ngram_embedder
from coherentize.variations.paraphrase import LocalParaphraser, ServerConfig, ServerParaphraser, clean_rewrite
from coherentize.variations.pipeline import AugmentSummary, augment, families_by_name
from coherentize.variations.prompt_sets import PROMPT_SETS, PromptItem, load_prompt_set, read_prompts
from coherentize.variations.templates import template_families

__all__ = [
    "BUILTIN_FAMILIES", "Family", "RuleFamily", "TemplateFamily", "apply_family", "vary",
    "FilterConfig", "filter_variations", "load_embedder", "ngram_embedder",
    "LocalParaphraser", "ServerConfig", "ServerParaphraser", "clean_rewrite",
    "AugmentSummary", "augment", "families_by_name",
    "PROMPT_SETS", "PromptItem", "load_prompt_set", "read_prompts",
    "load_template_families", "template_families", "build_clusters",
]
