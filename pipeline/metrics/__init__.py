"""Metrics: mask quality (`masks`), FID (`fid`), segmentation scores (`segmentation`)."""
