"""Item knowledge: a pretrained language model run once over every item's text (`embed_items@<name>`).

`text.py` builds each item's model input, `models.py` loads the model, `pooling.py` turns hidden
states into one vector, `checkpoint.py` keeps resumable chunks, `run.py` orchestrates and
`store.py` is the output contract (`read_item_embeddings`, what teachers and students import).
"""
