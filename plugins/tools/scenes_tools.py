"""``scenes``: offline text2image and edit_images over the scenes world (being written)."""
