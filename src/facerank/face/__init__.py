"""From a photo to a face's features: decode (`imageio`), detect (`detect`), align
(`align/`: dlib's chip, the ArcFace 112 crop, pre-aligned crops) and embed (`features`, with the
networks in `facerank.models`)."""
