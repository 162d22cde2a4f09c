"""Diffusion-model text2image and edit_images: FLUX, FLUX Kontext, SDXL-Turbo, InstructPix2Pix
(being written)."""
