"""polyllama"""
