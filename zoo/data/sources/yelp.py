"""Yelp (2019 reviews, S3-Rec processing): the fourth leaderboard dataset.

Read from ``<data root>/Yelp/Yelp.txt`` (downloaded from RUCAIBox/CIKM2020-S3Rec at a pinned commit when
missing, with ``Yelp_item2attributes.json``); item id k of the file is internal item id k, users follow line
order, and sequences keep the items a user reviewed more than once (as the published file does). Optional files
beside it: ``Yelp_item2title.json`` (business names, as ``title``) and ``datamaps.json`` (business / user ids,
and the attribute names: ``attributes`` holds the decoded category names joined with ", ", ``attribute_ids`` the
ids). There is no raw route: the Yelp Open Dataset is only distributed after accepting Yelp's terms.
"""

from __future__ import annotations

from pathlib import Path

from zoo.data.cache import source_inputs
from zoo.data.corpus import Corpus
from zoo.data.sources.amazon import S3RecDataset, fetch_sequence_files
from zoo.data.sources.seqfile import apply_datamaps, attributes_field, load_sequence_corpus
from zoo.registry import SOURCES

YELP = S3RecDataset(
    "yelp",
    "Yelp",
    "724b219106b81dd2349027da997334ddb6da9fe2f152ad6e0d97a93170f7caed",
    "f25acd5e1e680e0b22fd4e3f4fb6be4b2a7461e9222610616e3e1ee6702dd58d",
    (30431, 20033, 316354),
    title_file="Yelp_item2title.json",
)


def yelp_files(cfg) -> dict[str, Path]:
    folder = YELP.folder_path(cfg)
    return {
        "sequences": folder / "Yelp.txt",
        "attributes": folder / "Yelp_item2attributes.json",
        "titles": folder / "Yelp_item2title.json",
        "datamaps": folder / "datamaps.json",
    }


@SOURCES.register("yelp")
@source_inputs(lambda cfg: list(yelp_files(cfg).values()))
def yelp_source(cfg) -> Corpus:
    """Yelp 2019: 30,431 users, 20,033 businesses, 316,354 interactions; business names as titles."""
    fetch_sequence_files(YELP, cfg)
    files = yelp_files(cfg)
    titles = files["titles"] if files["titles"].is_file() else None
    corpus = load_sequence_corpus("yelp", files["sequences"], titles)
    names = None
    if files["datamaps"].is_file():
        maps = apply_datamaps(corpus, files["datamaps"])
        names = maps.get("id2attribute")
    if files["attributes"].is_file():
        corpus.item_text["attribute_ids"] = attributes_field(files["attributes"], corpus.num_items)
        if names:
            corpus.item_text["attributes"] = attributes_field(files["attributes"], corpus.num_items, names)
        else:
            corpus.item_text["attributes"] = corpus.item_text["attribute_ids"]
    return corpus.validate()
