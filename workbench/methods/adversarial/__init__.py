"""Adversarial distillation (survey chapter 3.2): a discriminator or an attacker in the loop.

``adversarial_kd`` (Xu, Hsu & Huang 2017: a discriminator tells the teacher's logits from the
student's, and the student learns to fool it) is a per-batch loss and lives here as a method.
Adversarially Robust Distillation (ARD) changes the student's *inputs* (PGD examples crafted
against the student) and is a scheme: :mod:`workbench.schemes.ard`, with the attack in
:mod:`workbench.robust`. The data-free schemes (DAFL, ZSKT) are schemes too.
"""
