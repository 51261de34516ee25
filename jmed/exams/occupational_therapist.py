"""作業療法士国家試験 (the national occupational therapist exam): the 59th was held in 2024 (KokushiMD-10's
作業 files). No year_offset (the 59th + 1965): `ExamKind.year` maps only exam numbers
100-199 (the medical, dental and pharmacist exams'), so an offset here would misdate those."""

from jmed.exams import ExamKind

# No pass rule yet: as the physical therapist exam (total ≥ the line and 実地問題 ≥ theirs, e.g. 2024
# 167/277 and 41/117, ishiyaku.co.jp), its 実地 questions are not whole blocks. KokushiMD-10's scorer
# (sagyou_score) reuses the physical therapist lines [168, 43], which are not this exam's.
EXAM = ExamKind(name="occupational_therapist", title="作業療法士国家試験", knowledge="作業療法学知識")
