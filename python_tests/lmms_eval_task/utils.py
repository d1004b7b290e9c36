"""doc_to_visual / doc_to_text / process_results of the local ``adapttoken_mc`` task."""
from adapttoken_ext.video import sample_video


def doc_to_visual(doc):
    return [str(sample_video(doc["video"]))]


def doc_to_text(doc):
    options = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(doc["options"]))
    return f"{doc['question']}\n{options}\nAnswer with the option's letter from the given choices directly."


def process_results(doc, results):
    pred = results[0].strip()[:1].upper()
    return {"accuracy": float(pred == doc["answer"])}
