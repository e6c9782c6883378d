"""DVC stage `embed_items@<name>`: every item's text through a language model once → data/item_text/<name>/.

Chunks of finished items are kept in models/checkpoints/embed-<name>/, so an interrupted run resumes.
"""

from distillrec.embed.run import embed_items
from distillrec.stage import stage


@stage
def main(params, name):
    embed_items(params, name, "data/processed", f"data/item_text/{name}", f"models/checkpoints/embed-{name}")


if __name__ == "__main__":
    main()
