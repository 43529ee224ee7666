"""Sharing a slim model: the Hub folder (quant ladder, card, licence) and uploading it."""
