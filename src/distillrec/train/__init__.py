"""Training and evaluation of students: objectives, ranking metrics, the trainer loop."""
