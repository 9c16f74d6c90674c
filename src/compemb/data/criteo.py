"""Facts about the Criteo Display Advertising Challenge ("Kaggle") data."""

# Distinct values of C1..C26 over all 7 days of train.txt (blank counted as a category).
CRITEO_KAGGLE_CARDINALITIES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
