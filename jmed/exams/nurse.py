"""看護師国家試験 (the national nursing exam): the 113th was held in 2024 (KokushiMD-10's 看護 files)."""

from jmed.exams import ExamKind

# No pass rule yet. The exam's rule (MHLW; KokushiMD-10's calculate_scores.py, kango_score): 必修 ≥ 40 of
# 50 points and 一般・状況設定 ≥ the year's line of 250 (2020 155, 2021 159, 2022 167, 2023 152 of 249,
# 2024 158 as the scorer has them; 2022 and 2023 agree with MHLW's as quoted by ikuseikai.org and
# zettaigoukaku.com). Its 必修 questions are questions 1-25 of each session (blocks A and B), not whole
# blocks, and `ExamKind.required_blocks` can only name whole blocks: jmed cannot split the points yet.
EXAM = ExamKind(name="nurse", title="看護師国家試験", knowledge="看護学知識", year_offset=1911)
