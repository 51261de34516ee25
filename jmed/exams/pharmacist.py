"""薬剤師国家試験 (the national pharmacist exam): the 109th was held in 2024."""

from jmed.exams import ExamKind

# No pass rule: its rule (a total line plus a per-subject floor on 必須問題) needs per-subject data
# that YakugakuQA does not carry.
EXAM = ExamKind(name="pharmacist", title="薬剤師国家試験", knowledge="薬学知識", year_offset=1915)
