"""Built-in datasets: image folders, Hugging Face datasets, and the offline scenes world."""
