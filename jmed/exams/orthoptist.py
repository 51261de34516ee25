"""視能訓練士国家試験 (the national orthoptist exam; KokushiMD-10's "Optometry", its 視能 files): the 54th
was held in 2024. No year_offset (the 54th + 1970): `ExamKind.year` maps only exam numbers
100-199 (the medical, dental and pharmacist exams'), so an offset here would misdate those."""

from jmed.exams import ExamKind
from jmed.exams.midwife import total_line_rule

# 102 of 169 points (一般 129 × 1 + 臨床 20 × 2): KokushiMD-10's scorer (calculate_scores.py,
# shinou_score) for every year; 169 points and 102 (60 %) as published by MHLW (shikakuclip.com for the
# 44th, guppy.jp for the 55th, 2025).
EXAM = ExamKind(
    name="orthoptist",
    title="視能訓練士国家試験",
    knowledge="視能矯正学知識",
    pass_rule=total_line_rule({}, (102, 169)),
    pass_source="KokushiMD-10 calculate_scores.py (shinou_score): total ≥ 102 (of 169 points, MHLW's 60 % "
    "line), as a fraction of the points scored",
)
